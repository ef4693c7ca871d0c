"""Which device, which dtype, and what they are called: the one place every package asks.

**Devices.** ``"auto"`` always means the same thing in this course: the first GPU (``cuda:0``) when torch
sees one, else the CPU. ``resolve_device`` turns any device argument into a ``torch.device`` and refuses a
GPU that is not there with a message that says what to do, instead of a CUDA traceback later.
``device_name`` gives the human name (the GPU's model, or the CPU's from ``/proc/cpuinfo``), the name the
datasheet table and every result's environment use.

**Dtypes.** Each number format has one short name: ``fp32``, ``tf32`` (fp32 storage, tensor-core math),
``bf16``, ``fp16``, ``fp8`` (e4m3), ``int8``, ``int4``. ``dtype_name`` accepts those, torch's names
(``torch.bfloat16``, ``"float16"``) and common aliases; ``bytes_per_element`` is what memory and
roofline predictions multiply by; ``resolve_dtype("auto")`` is bf16 on GPUs that support it, fp16 on
older ones (a T4), fp32 on the CPU.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from typing import Any

import torch

DTYPE_BYTES: dict[str, float] = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
                 "float8_e4m3fn": "fp8", "e4m3": "fp8"}
TORCH_DTYPE_NAMES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16",
                     "fp8": "float8_e4m3fn", "int8": "int8"}
WEIGHT_DTYPES = ("fp32", "bf16", "fp16")  # what a model's weights are loaded in


class NoGpuError(RuntimeError):
    """A GPU was asked for, but torch sees none; the message says what to use instead."""


def default_device() -> torch.device:
    """``cuda:0`` when torch sees a GPU, else ``cpu``: what ``"auto"`` means everywhere in the course."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def resolve_device(device: Any = "auto") -> torch.device:
    """``"auto"`` / ``None`` -> ``default_device()``; anything else -> ``torch.device``, checked to exist."""
    if device is None or device == "auto":
        return default_device()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NoGpuError(f"device={str(device)!r} asked for a GPU, but torch sees none (CPU-only build, no driver, "
                         "or CUDA_VISIBLE_DEVICES is empty). Use device='cpu' or mode='smoke'.")
    return dev


def synchronize(device: Any) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU, whose calls return when they are done)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (falls back to ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: Any = None) -> str:
    """Human name of a torch device: the GPU's model on CUDA, the CPU's model otherwise."""
    dev = resolve_device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()


def dtype_name(dtype: Any) -> str:
    """The short name (fp32, tf32, bf16, fp16, fp8, int8, int4) of a name or ``torch.dtype``."""
    name = str(dtype).replace("torch.", "")
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_BYTES)}")
    return name


def bytes_per_element(dtype: Any) -> float:
    """Bytes one element takes in ``dtype`` (int4: half a byte)."""
    return DTYPE_BYTES[dtype_name(dtype)]


def torch_dtype(dtype: Any) -> torch.dtype:
    """The ``torch.dtype`` that stores ``dtype`` (tf32 is stored as float32; int4 has none)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype_name(dtype)
    if name not in TORCH_DTYPE_NAMES:
        raise ValueError(f"{name} has no torch storage type")
    return getattr(torch, TORCH_DTYPE_NAMES[name])


def resolve_dtype(dtype: Any = "auto", device: Any = "auto") -> torch.dtype:
    """The dtype to hold a model's weights in: ``"auto"`` -> bf16 on GPUs with bf16, fp16 on older GPUs
    (a T4), fp32 on the CPU; otherwise one of fp32 / bf16 / fp16 (or a ``torch.dtype``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if resolve_device(device).type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        name = dtype_name(dtype)
    except ValueError:
        name = ""
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"dtype={dtype!r}: use one of auto, {', '.join(WEIGHT_DTYPES)}")
    return torch_dtype(name)
