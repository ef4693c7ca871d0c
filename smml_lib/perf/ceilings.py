"""What this device really delivers: the best matmul it runs and the fastest copy it makes.

``measure_ceilings(device)`` times one large matmul (TFLOP/s) and one large device-to-device copy (GB/s,
counting every byte once read and once written). These measured ceilings draw a roofline where no
datasheet applies (the CPU, an unlisted GPU) and show how far below the datasheet a real kernel lands;
their ratio is the device's *measured* ridge point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from smml_lib.common.device import resolve_device, torch_dtype
from smml_lib.perf.roofline import ridge_point
from smml_lib.perf.timing import Timing, benchmark


@dataclass
class Ceilings:
    """Measured ceilings of one device: best matmul TFLOP/s and copy bandwidth (read + write bytes)."""

    device_name: str
    matmul_dtype: str
    matmul_size: int
    matmul_tflops: float
    copy_bytes: int
    copy_gbps: float
    matmul: Timing
    copy: Timing

    @property
    def ridge_point(self) -> float:
        """FLOP/byte where this device's measured compute and memory roofs meet."""
        return ridge_point(self.matmul_tflops, self.copy_gbps)

    def summary(self) -> dict[str, Any]:
        return {"device_name": self.device_name, "matmul_dtype": self.matmul_dtype,
                "matmul_size": self.matmul_size, "matmul_tflops": self.matmul_tflops,
                "matmul_spread": self.matmul.spread, "copy_mib": self.copy_bytes / 2**20,
                "copy_gbps": self.copy_gbps, "copy_spread": self.copy.spread,
                "ridge_flop_per_byte": self.ridge_point, "method": self.matmul.method}


def measure_ceilings(device: Any = None, *, dtype: str | None = None, matmul_size: int | None = None,
                     copy_mib: int | None = None, iters: int | None = None) -> Ceilings:
    """Measure achievable matmul FLOP/s and memory-copy bandwidth on ``device``.

    Args:
        device: torch device (default: first GPU, else CPU).
        dtype: ``fp32``/``tf32``/``bf16``/``fp16``; default bf16 on GPUs, fp32 on the CPU.
        matmul_size: n of the n x n x n matmul (default 8192 on GPUs, 1024 on the CPU).
        copy_mib: size of the copied tensor (default 1024 MiB on GPUs, 128 MiB on the CPU).
        iters: timed iterations (default: chosen by the harness).
    """
    dev = resolve_device(device)
    gpu = dev.type == "cuda"
    dtype = dtype or ("bf16" if gpu else "fp32")
    n = matmul_size or (8192 if gpu else 1024)
    copy_mib = copy_mib or (1024 if gpu else 128)
    tdtype = torch_dtype(dtype)
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        a = torch.randn(n, n, device=dev, dtype=tdtype)
        b = torch.randn(n, n, device=dev, dtype=tdtype)
        out = torch.empty(n, n, device=dev, dtype=tdtype)
        mm = benchmark(torch.mm, a, b, out=out, iters=iters, device=dev, dtype=tdtype, label=f"mm {n}^3 {dtype}")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    del a, b, out
    src = torch.randn(copy_mib * 2**20 // 4, device=dev, dtype=torch.float32)
    dst = torch.empty_like(src)
    cp = benchmark(dst.copy_, src, iters=iters, device=dev, flush_l2=False, label=f"copy {copy_mib} MiB")
    moved = 2 * src.numel() * src.element_size()  # every byte is read once and written once
    del src, dst
    return Ceilings(mm.env["device_name"], dtype, n, mm.tflops(2 * n**3), moved, cp.gbps(moved), mm, cp)
