"""distributed: jobs of several processes started by torchrun, and what their results mean.

- ``launcher``: ``launch("train", [...], nproc=4)`` runs a worker under torchrun and returns one DataFrame
  of all ranks' results; a crashed or hung rank is named, with its traceback, within seconds;
- ``job``: a running torchrun job: output streamed, results collected, a failure explained, nothing left;
- ``runtime``: what every worker process needs: join the process group (``choose_backend``: NCCL on GPUs,
  gloo on CPUs), print once, write results, record failures, inject faults for drills;
- ``train_config``: ``TrainConfig``, one training run's arguments (the training worker's flags, defined once);
- ``strategies``: how single, DDP and FSDP2 hold a model (and the model every rank builds the same);
- ``batches``: the training data, a pure function of the step, so any strategy sees the same batches;
- ``collectives``: the cost model of collectives (bus bandwidth, message sizes) and the sweep's summary;
- ``analysis``: the tables and plots the Module 02 labs show from the workers' per-rank rows;
- ``workers``: the modules torchrun runs (a layer of its own, see its docstring).

May import: common, perf, models.
"""
