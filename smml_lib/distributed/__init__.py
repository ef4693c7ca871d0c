"""distributed: torchrun jobs (launcher, process-group runtime, batches) and their analysis."""
