"""What hardware are we on, what does its datasheet promise, and what does it really deliver?

Two of the three layers used throughout the course live here:

1. ``detect()``: the devices torch sees (GPUs with name, memory, SM count; else the CPU), the dtypes
   worth benchmarking on them, and which GPU pairs can reach each other's memory directly.
2. ``SPECS`` / ``lookup_spec(name)``: a datasheet table of accelerators with **dense** peak
   TFLOP/s per dtype (vendors often headline the 2:4-*sparse* figure, twice as large; training and
   inference of ordinary models never see it), memory in GB (1e9 bytes), bandwidth, L2 and SM count,
   each row with its source. An unknown GPU gives a clear "no datasheet entry" result, not a crash.

The third, what this device really achieves on a large matmul and a large copy, is
``smml_lib.perf.ceilings``; where a datasheet's compute and memory roofs meet (the ridge point) is
``smml_lib.perf.roofline``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import psutil
import torch

from smml_lib.common.device import cpu_name, resolve_device


@dataclass(frozen=True)
class AcceleratorSpec:
    """One datasheet row. TFLOP/s are dense (no sparsity); ``None`` where the chip lacks the format."""

    name: str
    match: str  # regex matched (case-insensitive) against the name torch reports
    fp32_tflops: float
    tf32_tflops: float | None
    bf16_tflops: float | None
    fp16_tflops: float
    fp8_tflops: float | None
    memory_gb: float
    bandwidth_gbs: float  # GB/s, datasheet
    l2_mib: float | None
    sms: int | None
    power_w: float | None
    interconnect: str
    source: str

    def peak_tflops(self, dtype: str) -> float | None:
        """Dense peak for a dtype name: fp32, tf32, bf16, fp16, fp8."""
        return {"fp32": self.fp32_tflops, "float32": self.fp32_tflops, "tf32": self.tf32_tflops,
                "bf16": self.bf16_tflops, "bfloat16": self.bf16_tflops, "fp16": self.fp16_tflops,
                "float16": self.fp16_tflops, "fp8": self.fp8_tflops}.get(dtype.replace("torch.", ""))


_FACTS = "shared/reference/hardware-aws-facts.md"
# fmt: off
SPECS: list[AcceleratorSpec] = [
    AcceleratorSpec("L4", r"\bL4\b", 30.3, 60, 121, 121, 242, 24, 300, 48, 58, 72, "PCIe Gen4 x16, no NVLink",
                    "GPUSPECS dense figures (datasheet's 242 bf16 is sparse); 300 GB/s, 72 W: GRK; "
                    f"58 SMs, 48 MiB L2: L4 deviceQuery [{_FACTS}]"),
    AcceleratorSpec("A10G", r"\bA10G\b", 35, 35, 70, 70, None, 24, 600, 6, 80, 300, "PCIe Gen4, no NVLink on g5",
                    "AWS A10G datasheet via FLOPREF/MFU-NOTE transcriptions; 80 SMs GPUMODE; "
                    f"6 MiB L2 from A10 deviceQuery [{_FACTS}]"),
    AcceleratorSpec("A10", r"\bA10\b(?!G)", 31.2, 62.5, 125, 125, None, 24, 600, 6, 72, 150, "PCIe Gen4",
                    f"A10 datasheet via Lightning _CUDA_FLOPS and gpu-specs; 600 GB/s Baseten [{_FACTS}]"),
    AcceleratorSpec("T4", r"\bT4\b", 8.1, None, None, 65, None, 16, 320, 4, 40, 70, "PCIe Gen3 x16",
                    "T4 datasheet via Lightning; 40 SMs, 4 MiB L2 deviceQuery; "
                    f"320 GB/s sysrqmts (no bf16) [{_FACTS}]"),
    AcceleratorSpec("L40S", r"\bL40S\b", 91.6, 183, 362, 362, 733, 48, 864, None, 142, 350, "PCIe Gen4 x16, no NVLink",
                    f"stas00/ml-engineering dense table; 864 GB/s sourcecode.com; SMs derived 18176/128 [{_FACTS}]"),
    AcceleratorSpec("A100 40GB SXM", r"A100.*SXM.*40", 19.5, 156, 312, 312, None, 40, 1555, 40, 108, 400,
                    "NVLink3 300 GB/s per direction", f"stas00/ml-engineering; 1555 GB/s NVIDIA PB-10577 [{_FACTS}]"),
    AcceleratorSpec("A100 80GB SXM", r"A100.*SXM.*80", 19.5, 156, 312, 312, None, 80, 2039, 40, 108, 400,
                    "NVLink3 300 GB/s per direction",
                    f"stas00/ml-engineering; 2039 GB/s elvispolimi/profile-scripts [{_FACTS}]"),
    AcceleratorSpec("H100 SXM", r"H100(?!.*(PCIe|NVL)).*(HBM3|SXM)", 67, 494.5, 989, 989, 1979, 80, 3350, 50, 132, 700,
                    "NVLink4 450 GB/s per direction", f"stas00/ml-engineering dense table [{_FACTS}]"),
    AcceleratorSpec("H100 PCIe", r"H100.*PCIe", 51, 378, 756, 756, 1513, 80, 2000, 50, 114, 350, "PCIe Gen5",
                    f"NVIDIA product brief PB-11133 (L2, SMs unverified) [{_FACTS}]"),
    AcceleratorSpec("H200", r"\bH200\b(?!.*NVL)", 67, 494.5, 989, 989, 1979, 141, 4800, 50, 132, 700,
                    "NVLink4 450 GB/s per direction", f"stas00/ml-engineering dense table [{_FACTS}]"),
    AcceleratorSpec("Trainium1", r"^Trainium1?$", 47.5, 190, 190, 190, 190, 34.36, 880, None, None, None,
                    "NeuronLink-v2", f"AWS Neuron docs, per chip (32 GiB, 820 GiB/s) [{_FACTS}]"),
    AcceleratorSpec("Trainium2", r"^Trainium2$", 181, 667, 667, 667, 1299, 103.08, 2900, None, None, None,
                    "NeuronLink-v3", f"AWS Neuron docs, per chip (96 GiB) [{_FACTS}]"),
]
# fmt: on


@dataclass
class SpecLookup:
    """Result of ``lookup_spec``: ``spec`` is ``None`` (with a message) when there is no datasheet entry."""

    query: str
    spec: AcceleratorSpec | None
    message: str

    @property
    def found(self) -> bool:
        return self.spec is not None


def lookup_spec(name: str) -> SpecLookup:
    """Find the datasheet row for a device name as torch reports it (e.g. ``"NVIDIA L4"``).

    Returns a ``SpecLookup``; for an unknown device ``found`` is False and ``message`` says what to
    do (use measured ceilings), instead of raising.
    """
    for spec in SPECS:
        if re.search(spec.match, name, flags=re.IGNORECASE):
            return SpecLookup(name, spec, f"datasheet entry: {spec.name}")
    return SpecLookup(name, None, f"no datasheet entry for {name!r}: rooflines use measured ceilings only "
                                  "(smml_lib.perf.ceilings.measure_ceilings)")


def spec_table() -> "Any":
    """The whole datasheet table as a DataFrame (one row per accelerator)."""
    return pd.DataFrame([asdict(s) for s in SPECS]).drop(columns=["match"])


@dataclass
class DeviceInfo:
    index: int | None
    kind: str  # "cuda" or "cpu"
    name: str
    memory_gb: float
    sm_count: int | None
    capability: str | None
    datasheet: str  # the matched spec row's name, or "" when none


def detect() -> list[DeviceInfo]:
    """The devices torch can use: every visible CUDA GPU, or the CPU when there is none."""
    if torch.cuda.is_available():
        out = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            spec = lookup_spec(p.name).spec
            out.append(DeviceInfo(i, "cuda", p.name, p.total_memory / 1e9, p.multi_processor_count,
                                  f"{p.major}.{p.minor}", spec.name if spec else ""))
        return out
    return [DeviceInfo(None, "cpu", cpu_name(), psutil.virtual_memory().total / 1e9, None, None, "")]


def devices_frame() -> "Any":
    return pd.DataFrame([asdict(d) for d in detect()])


def supported_dtypes(device: Any = None) -> list[str]:
    """Matmul dtypes worth benchmarking on a device (fp8 only where tensor cores support it)."""
    dev = resolve_device(device)
    if dev.type != "cuda":
        return ["fp32", "bf16"]
    major, minor = torch.cuda.get_device_capability(dev)
    out = ["fp32", "fp16"]
    if major >= 8:
        out[1:1] = ["tf32"]
        out.append("bf16")
    if (major, minor) >= (8, 9) and hasattr(torch, "float8_e4m3fn"):
        out.append("fp8")
    return out


def peer_access_matrix() -> "Any":
    """Which GPU can read another's memory directly (P2P over NVLink or PCIe).

    On a g6.12xlarge the four L4s share no NVLink and no PCIe P2P, so this matrix is all False off
    the diagonal and NCCL stages GPU-to-GPU traffic through host memory. Empty with fewer than 2 GPUs.
    """
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = [f"cuda:{i}" for i in range(n)]
    data = [[True if i == j else bool(torch.cuda.can_device_access_peer(i, j)) for j in range(n)] for i in range(n)]
    return pd.DataFrame(data, index=names, columns=names)
