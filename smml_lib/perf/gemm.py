"""GEMMs measured properly: FLOPs, bytes, arithmetic intensity, sweeps, and the maximum achievable matmul.

A GEMM ``C[M, N] = A[M, K] @ B[K, N]`` does **2·M·N·K** floating-point operations (one multiply and one
add per term of every dot product) and must move at least **bytes(dtype) x (M·K + K·N + M·N)**: read A
and B once, write C once. Their ratio, the **arithmetic intensity** in FLOP/byte, decides what limits
it (see ``smml_lib.perf.roofline``): below the device's ridge point the memory system sets the pace, above
it the math units do.

In a transformer every linear layer is such a GEMM with M = tokens in the batch (batch x sequence
for prefill, just the batch for decode) and N, K from the model config
(``smml_lib.models.workload.llama_layer_shapes`` lists them). Every timing goes through
``smml_lib.perf.timing.benchmark`` (CUDA events, L2 flush, median). The search for the best GEMM this
device runs is ``smml_lib.perf.mamf``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pandas as pd
import torch
from tqdm.auto import tqdm

from smml_lib.common.device import bytes_per_element, dtype_name, torch_dtype
from smml_lib.perf.hardware import lookup_spec
from smml_lib.perf.timing import benchmark

GEMM_DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")  # the formats this module can time


def gemm_dtype(dtype: Any) -> str:
    """The short name of a dtype this module can time (fp32, tf32, bf16, fp16, fp8), else ``ValueError``."""
    d = dtype_name(dtype)
    if d not in GEMM_DTYPES:
        raise ValueError(f"dtype {dtype!r}: GEMMs here run in {', '.join(GEMM_DTYPES)}")
    return d


def out_dtype_of(dtype: Any) -> str:
    """Dtype of C: the inputs' dtype, except fp8 GEMMs, which write bf16 (``torch._scaled_mm``)."""
    d = gemm_dtype(dtype)
    return "bf16" if d == "fp8" else d


def gemm_flops(m: int, n: int, k: int) -> float:
    """FLOPs of one (M x K) @ (K x N) matmul: 2·M·N·K."""
    return 2.0 * m * n * k


def gemm_min_bytes(m: int, n: int, k: int, dtype: Any = "bf16") -> float:
    """The least bytes a GEMM must move: read A (M·K) and B (K·N), write C (M·N). fp8 writes C in bf16."""
    d = gemm_dtype(dtype)
    return bytes_per_element(d) * (m * k + k * n) + bytes_per_element(out_dtype_of(d)) * m * n


def arithmetic_intensity(m: int, n: int, k: int, dtype: Any = "bf16") -> float:
    """FLOP per byte of minimum traffic. Square n³ in bf16: 2n³ / (2·3n²) = n/3."""
    return gemm_flops(m, n, k) / gemm_min_bytes(m, n, k, dtype)


@dataclass(frozen=True)
class GemmShape:
    """One GEMM shape ``(M x K) @ (K x N)`` with a label for tables and plots."""

    m: int
    n: int
    k: int
    label: str = ""

    @property
    def flops(self) -> float:
        return gemm_flops(self.m, self.n, self.k)

    def min_bytes(self, dtype: Any = "bf16") -> float:
        return gemm_min_bytes(self.m, self.n, self.k, dtype)

    def intensity(self, dtype: Any = "bf16") -> float:
        return arithmetic_intensity(self.m, self.n, self.k, dtype)

    @property
    def name(self) -> str:
        return self.label or f"{self.m}x{self.n}x{self.k}"


def square_shapes(sizes: list[int]) -> list[GemmShape]:
    return [GemmShape(s, s, s, f"{s}³") for s in sizes]


def wave_quantization(m: int, n: int, sms: int, tile: tuple[int, int] = (128, 128)) -> dict[str, float]:
    """How well output tiles fill the GPU's SMs: a GEMM runs in waves of ``sms`` tiles at once.

    With 58 SMs (L4) and 128x128 tiles, a 4096x4096 output has 1024 tiles = 17.66 waves: 17 full waves
    and a last one with 1024 - 17 x 58 = 38 tiles, so 38 of the 58 SMs are busy in it and 20 (34.5%) sit
    idle. Efficiency 1024 / (18 x 58) = 98%. A shape one tile larger
    can need a whole extra wave. Real kernels pick other tile sizes, so this predicts the *shape* of
    the sawtooth, not its exact position.
    """
    tiles = -(-m // tile[0]) * -(-n // tile[1])
    waves = -(-tiles // sms)
    return {"tiles": tiles, "waves": waves, "wave_efficiency": tiles / (waves * sms)}


@contextmanager
def allow_tf32(enabled: bool) -> Iterator[None]:
    """Let fp32 matmuls use tf32 tensor cores (or forbid it) inside the block; restores the setting after."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def make_gemm(m: int, n: int, k: int, dtype: Any = "bf16", device: Any = "cpu") -> Callable[[], Any]:
    """Random operands on ``device`` and a no-argument callable computing their product into a fixed output.

    B is stored N x K and transposed, as ``nn.Linear`` stores its weight. fp8 (e4m3) goes through
    ``torch._scaled_mm`` with unit scales and a bf16 output; its dimensions must be multiples of 16. It uses
    fast accumulation, as fp8 inference GEMMs do: without it Hopper's tensor cores periodically promote the
    partial sums to fp32, which costs throughput the datasheet's fp8 figure does not include.
    """
    d = gemm_dtype(dtype)
    dev = torch.device(device)
    if d == "fp8":
        if m % 16 or n % 16 or k % 16:
            raise ValueError(f"fp8 GEMMs need M, N, K divisible by 16 (got {m}x{n}x{k})")
        a = torch.randn(m, k, device=dev).to(torch.float8_e4m3fn)
        b = torch.randn(n, k, device=dev).to(torch.float8_e4m3fn).t()
        one = torch.ones((), device=dev)
        return lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16, use_fast_accum=True)
    tdtype = torch_dtype(d)
    a = torch.randn(m, k, device=dev, dtype=tdtype)
    b = torch.randn(n, k, device=dev, dtype=tdtype).t()
    out = torch.empty(m, n, device=dev, dtype=tdtype)
    return lambda: torch.mm(a, b, out=out)


def datasheet_peak_tflops(device_name: str, dtype: Any) -> float | None:
    """Dense datasheet peak for this device and dtype, or ``None`` (CPU, unlisted GPU, unsupported dtype)."""
    spec = lookup_spec(device_name).spec
    return spec.peak_tflops(gemm_dtype(dtype)) if spec else None


def time_gemm(shape: GemmShape, dtype: Any = "bf16", device: Any = "cpu", *, iters: int | None = None,
              warmup: int = 3, target_s: float = 0.2) -> dict[str, Any]:
    """Time one GEMM; a row with FLOPs, bytes, intensity, median time, TFLOP/s, GB/s and % of datasheet peak."""
    d = gemm_dtype(dtype)
    fn = make_gemm(shape.m, shape.n, shape.k, d, device)
    with allow_tf32(d == "tf32"):
        t = benchmark(fn, iters=iters, warmup=warmup, target_s=target_s, device=device, dtype=d, label=shape.name)
    peak = datasheet_peak_tflops(t.env["device_name"], d)
    tflops = t.tflops(shape.flops)
    row = {"label": shape.name, "m": shape.m, "n": shape.n, "k": shape.k, "dtype": d, "flops": shape.flops,
           "min_bytes": shape.min_bytes(d), "intensity": shape.intensity(d), "median_s": t.median_s,
           "p10_s": t.p10_s, "p90_s": t.p90_s, "spread": t.spread, "iters": t.iters, "tflops": tflops,
           "gbps": t.gbps(shape.min_bytes(d)), "peak_tflops": peak,
           "pct_of_peak": 100 * tflops / peak if peak else None, "device_name": t.env["device_name"]}
    row.update({f"env_{k}": v for k, v in t.env.items() if k not in ("device_name", "dtype")})
    return row


def sweep(shapes: list[GemmShape], dtypes: list[str] | str = "bf16", device: Any = "cpu", *,
          progress: bool = True, **kwargs: Any) -> "Any":
    """Time every shape in every dtype; one row per (shape, dtype), environment columns included."""
    dtypes = [dtypes] if isinstance(dtypes, str) else list(dtypes)
    jobs = [(s, d) for d in dtypes for s in shapes]
    rows = [time_gemm(s, d, device, **kwargs) for s, d in tqdm(jobs, desc="GEMMs", disable=not progress, leave=False)]
    return pd.DataFrame(rows)
