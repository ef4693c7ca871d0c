"""distributed.workers: the modules torchrun runs, ``python -m smml_lib.distributed.workers.<name>``.

The launcher names them by their short name (``launch("train")``). They sit above ``distributed`` and
``checkpoint`` because a training worker uses both: the process-group runtime and sharded checkpoints.

- ``train``: single-process, DDP or FSDP2 training with mixed precision, accumulation and checkpoints;
- ``collectives``: timing all-reduce, all-gather and reduce-scatter over message sizes (bus bandwidth);
- ``tp``: tensor parallelism of a Llama MLP, checked against the unsharded layer;
- ``hello``: the smallest job: rendezvous, one all-reduce, a few steps that can be stopped and resumed.

May import: common, perf, models, distributed, checkpoint.
"""
