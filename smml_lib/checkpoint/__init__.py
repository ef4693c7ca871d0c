"""checkpoint: training state that outlives a process, a node, or a spot instance.

- ``sharded``: save and resume model + optimizer + RNG state with ``torch.distributed.checkpoint`` (every
  rank writes its own shard), complete-or-absent folders;
- ``stop``: ``StopRequest``, the cooperative stop on SIGTERM / SIGUSR1 / an interruption notice, and
  ``EXIT_STOPPED``, the exit code of a job that stopped after saving;
- ``targets``: where checkpoints go beyond the node (an S3 bucket or a local S3 server), and which
  checkpoints under a prefix are complete.

May import: common, perf, distributed.
"""
