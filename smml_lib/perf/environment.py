"""The environment a measurement was taken in, recorded with every result.

A number without its environment cannot be compared: "120 TFLOP/s" means little until you know
it was bf16 on an L4 with driver 550 and torch 2.6 at a 2040 MHz SM clock. ``environment()``
returns that record as a flat dict; the timing harness attaches it to each result.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
from functools import lru_cache
from typing import Any

import torch

from smml_lib import __version__
from smml_lib.common.device import cpu_name, device_name, resolve_device
from smml_lib.common.paths import repo_root
from smml_lib.perf import nvml


@lru_cache(maxsize=1)
def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_root(), capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def environment(device: Any = None, dtype: Any = None) -> dict[str, Any]:
    """Return a flat record of the software and hardware a result was measured on.

    Args:
        device: the torch device measured (default: the first GPU, else the CPU).
        dtype: the data type measured, if any.
    """
    dev = resolve_device(device)
    rec: dict[str, Any] = {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(dev),
        "device_name": device_name(dev),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "smml_lib": __version__,
        "git_commit": _git_commit(),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "host_cpus": os.cpu_count(),
    }
    try:  # the installed version from its metadata: importing transformers costs 0.5-3 s for a string
        rec["transformers"] = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        pass
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        rec["driver"] = nvml.driver_version()
        rec["gpu_count"] = torch.cuda.device_count()
        rec.update(nvml.clocks_mhz(index))
    return rec
