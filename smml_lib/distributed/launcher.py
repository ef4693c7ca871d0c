"""Run a worker module under ``torchrun`` from a notebook or the shell, and get one DataFrame back.

    df = launch("train", ["--strategy", "ddp", "--max-steps", "5"])   # all GPUs, or 2 CPU processes
    smml launch train --nproc 2 -- --strategy fsdp                      # the same from a shell

What it does, and why a notebook should never ``mp.spawn`` its own functions (they cannot be pickled
from ``__main__``, and a crashed child hangs the kernel):

1. builds the torchrun command line (``torchrun_command``; Module 03's Slurm script uses the same
   function for multi-node jobs) and starts it in a **new process group**, with ``SMML_RUN_DIR``
   pointing at a fresh run folder and the backend chosen for the hardware (NCCL on GPUs, gloo on CPUs);
2. streams rank 0's output live into the notebook (all ranks' full logs land in ``<run>/logs``);
3. collects every rank's result JSON (``<run>/results``) into one DataFrame (``df.attrs`` holds the
   run folder, exit code and wall time);
4. when a rank crashes, raises ``WorkerFailed`` naming the rank, its host and the tail of its
   traceback (from the error file the worker wrote, else torchrun's per-rank error file or log);
   when the job outlives ``timeout_s``, kills it and raises ``LaunchTimeout``. Either way **no process
   is left behind**: the whole process group, every descendant seen while it ran, and any process still
   carrying this launch's ``SMML_LAUNCH_ID`` get SIGTERM, then SIGKILL after a grace period.

A worker that stopped cooperatively (SIGTERM, interruption notice; exit code 75, see
``smml_lib.checkpoint.stop``) is not an error: the DataFrame comes back with ``stopped_early`` rows.
``start(...)`` returns a ``Job`` handle instead of waiting, for drills that stop a running job.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Sequence

from smml_lib.common.paths import output_dir
from smml_lib.distributed.job import Job, LaunchError
from smml_lib.distributed.runtime import choose_backend, visible_gpus


def default_nproc() -> int:
    """All visible GPUs, or 2 CPU processes when there is none (smoke mode)."""
    return visible_gpus() or 2


WORKERS_PACKAGE = "smml_lib.distributed.workers"


def worker_module(worker: str) -> str:
    """``"train"`` -> ``"smml_lib.distributed.workers.train"`` (a course worker); a dotted module name is kept."""
    if "." in worker:
        return worker
    return f"{WORKERS_PACKAGE}.{worker}"


def torchrun_command(worker: str, args: Sequence[str] = (), *, nproc: int | None = None, nnodes: int = 1,
                     rdzv_endpoint: str | None = None, rdzv_id: str = "smml", log_dir: str | None = None,
                     stream_rank: int | None = 0, python: str | None = None, torchrun: str | None = None,
                     max_restarts: int = 0) -> list[str]:
    """The torchrun command line that runs ``worker`` (a module of smml_lib) with ``args``.

    Args:
        worker: a course worker's short name (``"train"``, ``"collectives"``...) or a full module name.
        nproc: processes per node (default: all GPUs, else 2).
        nnodes: number of nodes. With 1 and no ``rdzv_endpoint``: ``--standalone`` (a local rendezvous).
        rdzv_endpoint: ``host:port`` of the c10d rendezvous for multi-node jobs (node 0's address);
            every node runs the same command.
        rdzv_id: job id shared by all nodes of one job (e.g. ``$SLURM_JOB_ID``).
        log_dir: per-rank logs and error files (``--log-dir`` with ``--tee 3``); ``None``: no redirection.
        stream_rank: with ``log_dir``, the local rank whose output is echoed on the console (``None``: all).
        python: interpreter (default: this one, so the same environment runs the workers); ignored when
            ``torchrun`` is given (e.g. ``"torchrun"`` for a Slurm script).
    """
    nproc = nproc or default_nproc()
    cmd = [torchrun] if torchrun else [python or sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1 and not rdzv_endpoint:
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        if not rdzv_endpoint:
            raise ValueError("a multi-node job needs rdzv_endpoint='host:port' (node 0's address)")
        cmd += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint,
                "--rdzv-id", rdzv_id]
    cmd += ["--nproc-per-node", str(nproc), "--max-restarts", str(max_restarts)]
    if log_dir:
        cmd += ["--log-dir", str(log_dir), "--tee", "3"]
        if stream_rank is not None:
            cmd += ["--local-ranks-filter", str(stream_rank)]
    return cmd + ["-m", worker_module(worker), *map(str, args)]


def new_run_dir(worker: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return output_dir("runs", f"{stamp}-{worker_module(worker).rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:6]}")


def start(worker: str, args: Sequence[str] = (), *, nproc: int | None = None, backend: str = "auto",
          timeout_s: float = 600.0, env: dict[str, str] | None = None, run_dir: str | os.PathLike | None = None,
          echo: bool = True, shutdown_timeout_s: int = 120) -> Job:
    """Start ``worker`` under torchrun without waiting (see ``launch``); returns a ``Job``."""
    nproc = nproc or default_nproc()
    folder = Path(run_dir) if run_dir else new_run_dir(worker)
    folder.mkdir(parents=True, exist_ok=True)
    backend = choose_backend(backend, gpus_per_node=visible_gpus(), processes_per_node=nproc or default_nproc())
    full_env = {**os.environ, "SMML_RUN_DIR": str(folder), "SMML_BACKEND": backend,
                "SMML_LAUNCH_ID": uuid.uuid4().hex, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(shutdown_timeout_s),
                # CPU smoke runs: one core per process, the analogue of one GPU per process (and no
                # OpenMP threads fighting over cores, which slows a loaded machine ten-fold)
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or
                                   ("1" if backend == "gloo" else str(max(1, (os.cpu_count() or 1) // nproc))),
                **(env or {})}
    if backend == "gloo" and "CUDA_VISIBLE_DEVICES" not in (env or {}):
        full_env.setdefault("CUDA_VISIBLE_DEVICES", "")
    argv = torchrun_command(worker, args, nproc=nproc, log_dir=str(folder / "logs"))
    (folder / "command.txt").write_text(" ".join(argv) + "\n")
    return Job(argv, folder, full_env, timeout_s, echo)


def launch(worker: str, args: Sequence[str] = (), *, nproc: int | None = None, backend: str = "auto",
           timeout_s: float = 600.0, env: dict[str, str] | None = None, run_dir: str | os.PathLike | None = None,
           echo: bool = True) -> Any:
    """Run ``torchrun -m smml_lib.<worker> args`` and return every rank's results as one DataFrame.

    Args:
        worker: ``"train"`` (or ``"train"``), ``"collectives"``, ``"tp"``...
        args: the worker's own flags, e.g. ``["--strategy", "fsdp", "--max-steps", "10"]``.
        nproc: processes (default: all GPUs; 2 CPU processes without GPUs).
        backend: ``"auto"`` (nccl on GPUs, gloo on CPUs), ``"nccl"``, ``"gloo"``.
        timeout_s: kill the whole job after this long and raise ``LaunchTimeout``.
        env: extra environment variables for the workers (e.g. ``{"NCCL_P2P_DISABLE": "1"}``).
        run_dir: where results and logs go (default: a new folder under ``<outputs>/runs``).
        echo: stream rank 0's output here.

    Raises:
        WorkerFailed: a rank crashed (the message names it and ends with its traceback).
        LaunchTimeout: the job hung or was too slow.
    """
    job = start(worker, args, nproc=nproc, backend=backend, timeout_s=timeout_s, env=env, run_dir=run_dir, echo=echo)
    try:
        return job.wait()
    except BaseException:
        if job.proc.poll() is None or job.leftovers():
            job.kill()  # KeyboardInterrupt in the notebook, or any error: leave nothing running
        raise


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml launch", description="Run a smml_lib worker under torchrun.",
                                epilog="example: smml launch train --nproc 2 -- --strategy fsdp --max-steps 5")
    p.add_argument("worker", help="train | collectives | tp | hello (smml_lib.distributed.workers), or a module name")
    p.add_argument("--nproc", type=int, default=None)
    p.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"])
    p.add_argument("--timeout-s", type=float, default=3600)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--print-command", action="store_true", help="print the torchrun command and exit")
    p.add_argument("--nnodes", type=int, default=1, help="with --print-command: nodes of a multi-node job")
    p.add_argument("--rdzv-endpoint", default=None, help="with --print-command: host:port of node 0")
    own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    a = p.parse_args(own)  # the worker's own flags come after "--"
    if a.print_command:
        print(" ".join(torchrun_command(a.worker, rest, nproc=a.nproc, nnodes=a.nnodes, rdzv_endpoint=a.rdzv_endpoint,
                                        torchrun="torchrun" if a.nnodes > 1 else None)))
        return 0
    try:
        df = launch(a.worker, rest, nproc=a.nproc, backend=a.backend, timeout_s=a.timeout_s, run_dir=a.run_dir)
    except LaunchError as exc:
        print(f"smml launch: {exc}", file=sys.stderr)
        return 1
    cols = [c for c in df.columns if not isinstance(df[c].iloc[0], list)] if len(df) else []
    print(df[cols].to_string() if cols else "(no results)")
    print(f"results: {df.attrs['run_dir']}")
    return 0
