"""smml_lib: the library behind the SMML Lab notebooks. The notebooks tell the story; this package does the work.

Packages by concern, bottom layer first. Each may import only the packages below it that its own
docstring lists on its ``May import:`` line (``tests/test_architecture.py`` enforces those lines):

=========================  ================================================================================
``common``                 plumbing: paths, device and dtype choice, notebook display, plots, secrets, S3
``perf``                   the hardware: datasheet specs, timing, GEMMs, MAMF, roofline, telemetry, results
``models``                 Llama checkpoints: anatomy, loading, the tiny model, inference, memory planning
``distributed``            torchrun jobs: launcher, process-group runtime, batches, collectives, analysis
``checkpoint``             sharded checkpoints, the cooperative stop, S3 / local checkpoint targets
``distributed.workers``    the modules torchrun runs: train, collectives, tp, hello
``cluster``                a real two-node Slurm cluster on one machine, sbatch scripts, jobs
``serving``                an OpenAI-compatible inference server with batching, and its load generator
``cost``                   prices, cost calculators, spot economics, the spot interruption drill
``course``                 the labs: start_lab, the headless runner and its report, doctor, diagrams
``benchmarks``             scripts that print the figures the course promises (``smml bench``)
=========================  ================================================================================

The ``smml`` command (``smml_lib.cli``) reaches each package's command line: ``smml doctor``, ``smml labs``,
``smml bench``, ``smml serve``...
"""

__version__ = "0.1.0"
