"""Sharded checkpoints: save and resume model + optimizer + random state with every rank writing its shard.

**Checkpoints.** ``save_checkpoint`` writes model + optimizer state with ``torch.distributed.checkpoint``
(DCP): every rank writes *its own shard* in parallel (an FSDP rank its slice of each parameter and of the
Adam moments, a DDP rank only what DCP assigns it), so save time does not grow with the number of GPUs.
``get_state_dict`` / ``set_state_dict`` make the same code work for a plain model, DDP and FSDP2, and a
checkpoint written by N ranks loads into M ranks (DCP re-shards on load). Next to the shards:

- ``meta.json``: the global step, world size, strategy, the data position (``next_step``: batches are a
  pure function of the step, see ``smml_lib.distributed.batches``) and the run's config;
- ``rng/rank<N>.pt``: each rank's random generator states (CPU, CUDA, Python, NumPy).

Layout of a checkpoint root (a local or shared folder; Module 03 copies these folders to S3)::

    <root>/step_00000012/   .metadata  __0_0.distcp  __1_0.distcp  meta.json  rng/rank0.pt ...
    <root>/latest            text file: "step_00000012"

On several nodes ``<root>`` must be one folder all nodes see (a shared file system): DCP's coordinator
(rank 0) writes the ``.metadata`` index, and rank 0 renames the folder once every rank has written.

A checkpoint is first written as ``.step_<N>.partial`` and renamed once every rank has finished, so a
folder named ``step_*`` is always complete: a job killed mid-save leaves only a ``.partial`` folder,
which resume ignores. Only the newest ``keep_last`` checkpoints are kept.

The cooperative stop that decides *when* a stopped job saves (SIGTERM, an interruption notice) is
``smml_lib.checkpoint.stop``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from smml_lib.distributed.runtime import DistEnv, barrier

LATEST = "latest"


@dataclass
class CheckpointInfo:
    """One saved checkpoint: where, which step, how big (all ranks' files), how long the save took."""

    path: Path
    step: int
    size_bytes: int
    seconds: float


def step_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (``.partial`` folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "meta.json").exists())


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root``, or ``None``."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def checkpoint_size_bytes(path: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(path) / "meta.json").read_text())


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@contextmanager
def _single_process_ok(env: DistEnv) -> Iterator[None]:
    """Silence DCP's "assuming single process" warning when that is exactly what we run."""
    with warnings.catch_warnings():
        if not env.distributed:
            warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process.*")
        yield


def save_checkpoint(root: str | os.PathLike, step: int, model: Any, optimizer: Any, env: DistEnv, *,
                    meta: dict[str, Any] | None = None, keep_last: int = 2) -> CheckpointInfo:
    """Save a sharded checkpoint of ``model`` and ``optimizer`` after global step ``step`` (collective).

    Every rank must call this at the same step. Returns where it went, its size and the save time
    (from the first rank starting to the last rank finishing, renaming included).
    """
    root = Path(root)
    final, partial = step_dir(root, step), root / f".step_{step:08d}.partial"
    barrier(env)
    t0 = time.perf_counter()
    if env.rank == 0:
        shutil.rmtree(partial, ignore_errors=True)  # a leftover of a save that was killed
    barrier(env)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_ok(env):
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(partial))
    (partial / "rng").mkdir(parents=True, exist_ok=True)
    torch.save(_rng_state(), partial / "rng" / f"rank{env.rank}.pt")
    barrier(env)  # every shard is on disk
    if env.rank == 0:  # one process finalizes: the folder must be shared by all nodes (e.g. FSx, EFS, NFS)
        info = {"step": step, "world_size": env.world_size, "saved_utc": time.time(), "torch": torch.__version__,
                **(meta or {})}
        (partial / "meta.json").write_text(json.dumps(info, indent=1, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)  # atomic: a folder named step_* is always complete
        (root / f"{LATEST}.tmp").write_text(final.name)
        os.replace(root / f"{LATEST}.tmp", root / LATEST)
        for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier(env)
    seconds = time.perf_counter() - t0
    return CheckpointInfo(final, step, checkpoint_size_bytes(final) if final.exists() else 0, seconds)


def load_checkpoint(path: str | os.PathLike, model: Any, optimizer: Any, env: DistEnv) -> dict[str, Any]:
    """Load a checkpoint folder into ``model`` and ``optimizer`` (collective); returns its ``meta.json``.

    Works across strategies and world sizes (DCP re-shards). Random generator states are restored
    when the world size is the same as at save time.
    """
    path = Path(path)
    if not (path / "meta.json").exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no meta.json); use latest_checkpoint(root)")
    meta = read_meta(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_ok(env):
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng = path / "rng" / f"rank{env.rank}.pt"
    if meta.get("world_size") == env.world_size and rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False))
    barrier(env)
    return meta
