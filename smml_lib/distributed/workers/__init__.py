"""distributed.workers: the modules torchrun runs (python -m smml_lib.distributed.workers.<name>)."""
