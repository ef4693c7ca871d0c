"""What every ``torchrun`` worker needs: join the process group, print once, write results, fail loudly.

A worker is a module run as ``torchrun ... -m smml_lib.worker_<name> [flags]`` (by
``smml_lib.distributed.launcher`` from a notebook or ``smml launch``, or by hand, or by ``srun`` on a cluster).
torchrun starts one process per GPU and tells each who it is through environment variables:
``RANK`` (0..world_size-1 over all nodes), ``LOCAL_RANK`` (0..nproc-1 on this node), ``WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT``. ``init_distributed()`` reads them, picks the backend (NCCL on GPUs,
gloo on CPUs) and pins each process to its own GPU. Without torchrun it returns a one-process
"world" so the same worker code runs in a test or a notebook.

Results: each rank writes its rows as JSON into the run folder (``SMML_RUN_DIR``, set by the
launcher, or ``--run-dir``); the launcher turns all ranks' files into one DataFrame. A rank that
raises writes ``rank<N>.error.json`` with its traceback first, so the launcher can name the rank
that failed and show why, instead of the generic "ChildFailedError" torchrun prints.

Fault injection (``--inject-fault crash|hang --fault-rank R --fault-step S``) exists so tests and
labs can show what a crashed or hung rank looks like, on purpose.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from smml_lib.common.device import default_device
from smml_lib.common.paths import output_dir


@dataclass
class DistEnv:
    """Who this process is in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    backend: str  # "nccl", "gloo" or "none" (one process, no process group)
    device: Any  # torch.device

    @property
    def distributed(self) -> bool:
        return self.backend != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    def describe(self) -> dict[str, Any]:
        return {"rank": self.rank, "world_size": self.world_size, "local_rank": self.local_rank,
                "node_rank": self.node_rank, "num_nodes": self.num_nodes, "backend": self.backend,
                "device": str(self.device), "hostname": os.uname().nodename}


def choose_backend(backend: str = "auto", *, gpus_per_node: int, processes_per_node: int) -> str:
    """The process group's backend, the one rule every launch path uses (launcher, sbatch script, worker).

    ``"auto"``: NCCL when every process on a node can have a GPU of its own, else gloo (CPUs, or more
    processes than GPUs: NCCL needs one GPU per rank). ``"nccl"`` / ``"gloo"`` are kept as given.
    """
    if backend not in ("auto", "nccl", "gloo"):
        raise ValueError(f"backend={backend!r}: use auto, nccl or gloo")
    if backend != "auto":
        return backend
    return "nccl" if 0 < processes_per_node <= gpus_per_node else "gloo"


def visible_gpus() -> int:
    """How many GPUs this process can use (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def init_distributed(backend: str = "auto", timeout_s: float = 300.0) -> DistEnv:
    """Join the job's process group (or run alone when not started by torchrun).

    Args:
        backend: ``"auto"`` (nccl on GPUs, gloo on CPUs), ``"nccl"`` or ``"gloo"``.
        timeout_s: how long a collective may wait for a peer before failing (instead of hanging forever).
    """
    if "WORLD_SIZE" not in os.environ:
        return DistEnv(0, 1, 0, 1, 0, "none", default_device())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if backend == "auto":  # the launcher (or the sbatch script) passes its choice down as SMML_BACKEND
        backend = os.environ.get("SMML_BACKEND") or choose_backend(gpus_per_node=visible_gpus(), processes_per_node=1)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'nccl' needs CUDA GPUs, but torch sees none in this process; use gloo")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": _dt.timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = dev  # binds the communicator to this GPU at once (no guessing later)
        dist.init_process_group(**kwargs)
    return DistEnv(rank, world, local_rank, local_world, int(os.environ.get("GROUP_RANK", 0)), backend, dev)


def shutdown() -> None:
    """Leave the process group (safe to call when none was started)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        if env.backend == "nccl":
            dist.barrier(device_ids=[env.local_rank])
        else:
            dist.barrier()


def any_rank(env: DistEnv, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (one tiny all-reduce)."""
    if not env.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def print0(*args: Any, env: DistEnv | None = None, **kwargs: Any) -> None:
    """Print on rank 0 only (``RANK`` from the environment when no ``env`` is given), flushed at once."""
    rank = env.rank if env is not None else int(os.environ.get("RANK", 0))
    if rank == 0:
        print(*args, **kwargs, flush=True)


def run_dir(path: str | os.PathLike | None = None) -> Path:
    """The run folder results go to: ``path``, else ``SMML_RUN_DIR``, else ``<outputs>/runs/manual``."""
    if path:
        out = Path(path)
    elif os.environ.get("SMML_RUN_DIR"):
        out = Path(os.environ["SMML_RUN_DIR"])
    else:
        out = output_dir("runs", "manual")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_result(rows: list[dict[str, Any]] | dict[str, Any], env: DistEnv, tag: str = "result",
                 folder: str | os.PathLike | None = None) -> Path:
    """Write this rank's result rows to ``<run dir>/results/rank<NNNN>-<tag>.json`` (atomically)."""
    rows = [rows] if isinstance(rows, dict) else list(rows)
    out = run_dir(folder) / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"rank{env.rank:04d}-{tag}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"rank": env.rank, **r} for r in rows], default=_jsonable))
    os.replace(tmp, path)
    return path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def write_error(exc: BaseException, folder: str | os.PathLike | None = None) -> Path | None:
    """Record this rank's failure (type, message, traceback, time) as ``<run dir>/rank<N>.error.json``."""
    try:
        rank = int(os.environ.get("RANK", 0))
        path = run_dir(folder) / f"rank{rank}.error.json"
        path.write_text(json.dumps({
            "rank": rank, "local_rank": int(os.environ.get("LOCAL_RANK", 0)), "host": os.uname().nodename,
            "pid": os.getpid(), "time": time.time(), "type": type(exc).__name__, "message": str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}))
        return path
    except OSError:
        return None


def run_worker(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    """Entry point of a worker module: run ``main(argv)``, record any failure for the launcher, exit.

    The exception is re-raised after it is recorded, so torchrun also reports the rank as failed.
    """
    argv = sys.argv[1:] if argv is None else argv
    folder = _peek_run_dir(argv)
    try:
        code = record(main)(argv)  # also writes torchrun's TORCHELASTIC_ERROR_FILE: its summary shows the traceback
    except BaseException as exc:  # record everything, including KeyboardInterrupt
        if not isinstance(exc, SystemExit) or exc.code not in (0, None):
            write_error(exc, folder)
        raise
    finally:
        shutdown()
    # Every result is written and the process group is gone: leave without the interpreter's teardown. Tearing
    # torch's C++ objects (gloo's worker threads and their tensors) down after Python's own can abort a
    # finished rank ("terminate called without an active exception", seen once in this project's test runs),
    # which would turn a completed job into a failed one.
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


def _peek_run_dir(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--run-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--run-dir="):
            return a.split("=", 1)[1]
    return None


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags every worker accepts: where results go, the backend, and fault injection for drills."""
    parser.add_argument("--run-dir", default=None, help="folder for results (default: SMML_RUN_DIR)")
    parser.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"])
    parser.add_argument("--pg-timeout-s", type=float, default=300.0,
                        help="collectives fail after waiting this long for a peer")
    parser.add_argument("--inject-fault", default="none", choices=["none", "crash", "hang"],
                        help="make one rank fail on purpose (to see what a crash or a hang looks like)")
    parser.add_argument("--fault-rank", type=int, default=1, help="the rank that fails")
    parser.add_argument("--fault-step", type=int, default=1, help="the step at which it fails")


def maybe_inject_fault(args: argparse.Namespace, env: DistEnv, step: int) -> None:
    """Crash or hang this rank at ``step`` if the flags ask for it (a drill, never in normal runs)."""
    if args.inject_fault == "none" or env.rank != args.fault_rank or step != args.fault_step:
        return
    if args.inject_fault == "crash":
        raise RuntimeError(f"injected crash on rank {env.rank} at step {step} (--inject-fault crash)")
    print(f"[rank {env.rank}] injected hang at step {step}: this rank now sleeps forever", flush=True)
    while True:  # a stuck rank: ignores the stop flag, only a kill ends it
        time.sleep(1)
