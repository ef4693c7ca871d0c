"""smml_lib: the library behind the SMML Lab notebooks.

The notebooks tell the story; this package does the work. Modules are small and flat, grouped here by
the part of the course that introduces them (each module's docstring teaches its topic):

Foundation (Module 00)
- ``lab``, ``labs``, ``report``, ``plainrun``   start a lab and end it with a check; the headless runner
  (``smml labs``) and its HTML report; a lab as plain Python on machines without Jupyter
- ``hardware``, ``env``, ``nvml``, ``doctor``   device detection, datasheet peaks and measured ceilings,
  the environment recorded with every result, ``smml doctor``
- ``models``, ``tiny``, ``weights``, ``anatomy``   ``load_llama`` (hub id, folder, the offline ``"tiny"``
  Llama), what is inside a checkpoint, and predictions from a config
- ``inference``, ``compiling``   TTFT / TPOT / tokens/s; eager vs ``torch.compile``
- ``display``, ``plots``, ``results``, ``exercises``, ``paths``, ``credentials``, ``kernel``, ``cli``

Leveraging hardware (Module 01)
- ``timing``   the one timing harness (CUDA events / perf_counter)
- ``gemm``, ``roofline``, ``ladder``, ``telemetry``, ``telemetry_backends``   GEMM sweeps and MAMF, the
  roofline, the decode optimization ladder, NVML telemetry with a CPU fallback

Multi-accelerator distribution (Module 02)
- ``launcher``, ``dist``   run ``torchrun -m smml_lib.worker_*`` and collect one DataFrame; what every
  worker needs
- ``worker_train``, ``worker_collectives``, ``worker_tp``, ``worker_hello``   the distributed workers
- ``checkpoint``, ``data``, ``memtrack``, ``planner``, ``bigmodel``, ``scaling``, ``distlab``

Multi-node orchestration (Module 03)
- ``cluster``, ``cluster_host``, ``slurm``, ``slurm_script``, ``multinode``, ``storage``   a real 2-node
  Slurm cluster on one machine, sbatch jobs, S3 checkpoints
- ``serving``, ``serving_api``, ``serving_process``, ``schedulers``, ``kvbatch``, ``serving_limits``,
  ``loadgen``   an OpenAI-compatible server with static and continuous batching, and its load generator

Cost optimization (Module 04)
- ``cost``, ``costcalc``, ``spotcalc``, ``spot``, ``imds``   prices (live or snapshot), the cost calculators, spot
  economics (interruptions, checkpoint intervals), the spot drill and its stand-in metadata service

Course documents
- ``diagrams``, ``diagram_figures``   the diagrams in ``assets/``, drawn from source

Importing the package is cheap: heavy libraries (torch, transformers) load with the submodule
that needs them.
"""

__version__ = "0.1.0"
