"""GEMMs measured properly: FLOPs, bytes, arithmetic intensity, sweeps, and the maximum achievable matmul.

A GEMM ``C[M, N] = A[M, K] @ B[K, N]`` does **2·M·N·K** floating-point operations (one multiply and one
add per term of every dot product) and must move at least **bytes(dtype) x (M·K + K·N + M·N)**: read A
and B once, write C once. Their ratio, the **arithmetic intensity** in FLOP/byte, decides what limits
it (see ``smml_lib.perf.roofline``): below the device's ridge point the memory system sets the pace, above
it the math units do.

In a transformer every linear layer is such a GEMM with M = tokens in the batch (batch x sequence
for prefill, just the batch for decode) and N, K from the model config; ``llama_layer_shapes`` lists
them. Every timing goes through ``smml_lib.perf.timing.benchmark`` (CUDA events, L2 flush, median).

``max_achievable_matmul`` searches for the best TFLOP/s this device really delivers (the "MAMF",
after stas00's mamf-finder), bounded by a time budget; the gap to the datasheet's dense peak is the
honest denominator for every later "percent of peak" in the course.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from smml_lib.models.anatomy import _dims
from smml_lib.perf.timing import benchmark

DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")
_TORCH_NAMES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp8": "float8_e4m3fn"}
_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
            "float8_e4m3fn": "fp8", "e4m3": "fp8"}
DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


def dtype_name(dtype: Any) -> str:
    """Short name (fp32, tf32, bf16, fp16, fp8) for a name or ``torch.dtype``."""
    name = str(dtype).replace("torch.", "")
    name = _ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return name


def out_dtype_of(dtype: Any) -> str:
    """Dtype of C: the inputs' dtype, except fp8 GEMMs, which write bf16 (``torch._scaled_mm``)."""
    d = dtype_name(dtype)
    return "bf16" if d == "fp8" else d


def gemm_flops(m: int, n: int, k: int) -> float:
    """FLOPs of one (M x K) @ (K x N) matmul: 2·M·N·K."""
    return 2.0 * m * n * k


def gemm_min_bytes(m: int, n: int, k: int, dtype: Any = "bf16") -> float:
    """The least bytes a GEMM must move: read A (M·K) and B (K·N), write C (M·N). fp8 writes C in bf16."""
    d = dtype_name(dtype)
    return DTYPE_BYTES[d] * (m * k + k * n) + DTYPE_BYTES[out_dtype_of(d)] * m * n


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


def llama_layer_shapes(config: Any, tokens: int, *, include_head: bool = True) -> list[GemmShape]:
    """The GEMMs of one Llama decoder layer (and the output head) for ``tokens`` rows in the batch.

    ``nn.Linear(in, out)`` computes x @ W^T: M = tokens, K = in_features, N = out_features.
    q/o use all heads, k/v only the key/value heads (grouped-query attention); the SwiGLU MLP has gate
    and up (d -> ff) and down (ff -> d). Attention's own score matmuls depend on the context and are left out.
    """
    k = _dims(config)
    q, kv = k["h"] * k["hd"], k["kv"] * k["hd"]
    shapes = [GemmShape(tokens, q, k["d"], "q_proj"), GemmShape(tokens, kv, k["d"], "k_proj"),
              GemmShape(tokens, kv, k["d"], "v_proj"), GemmShape(tokens, k["d"], q, "o_proj"),
              GemmShape(tokens, k["ff"], k["d"], "gate_proj"), GemmShape(tokens, k["ff"], k["d"], "up_proj"),
              GemmShape(tokens, k["d"], k["ff"], "down_proj")]
    if include_head:
        shapes.append(GemmShape(tokens, k["V"], k["d"], "lm_head"))
    return shapes


def wave_quantization(m: int, n: int, sms: int, tile: tuple[int, int] = (128, 128)) -> dict[str, float]:
    """How well output tiles fill the GPU's SMs: a GEMM runs in waves of ``sms`` tiles at once.

    With 58 SMs (L4) and 128x128 tiles, a 4096x4096 output has 1024 tiles = 17.66 waves, so the last
    wave runs with 66% of the SMs idle: efficiency 1024 / (18 x 58) = 98%. A shape one tile larger
    can need a whole extra wave. Real kernels pick other tile sizes, so this predicts the *shape* of
    the sawtooth, not its exact position.
    """
    tiles = -(-m // tile[0]) * -(-n // tile[1])
    waves = -(-tiles // sms)
    return {"tiles": tiles, "waves": waves, "wave_efficiency": tiles / (waves * sms)}


@contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    import torch

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
    import torch

    d = dtype_name(dtype)
    dev = torch.device(device)
    if d == "fp8":
        if m % 16 or n % 16 or k % 16:
            raise ValueError(f"fp8 GEMMs need M, N, K divisible by 16 (got {m}x{n}x{k})")
        a = torch.randn(m, k, device=dev).to(torch.float8_e4m3fn)
        b = torch.randn(n, k, device=dev).to(torch.float8_e4m3fn).t()
        one = torch.ones((), device=dev)
        return lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16, use_fast_accum=True)
    tdtype = getattr(torch, _TORCH_NAMES[d])
    a = torch.randn(m, k, device=dev, dtype=tdtype)
    b = torch.randn(n, k, device=dev, dtype=tdtype).t()
    out = torch.empty(m, n, device=dev, dtype=tdtype)
    return lambda: torch.mm(a, b, out=out)


def datasheet_peak_tflops(device_name: str, dtype: Any) -> float | None:
    """Dense datasheet peak for this device and dtype, or ``None`` (CPU, unlisted GPU, unsupported dtype)."""
    from smml_lib.perf.hardware import lookup_spec

    spec = lookup_spec(device_name).spec
    return spec.peak_tflops(dtype_name(dtype)) if spec else None


def time_gemm(shape: GemmShape, dtype: Any = "bf16", device: Any = "cpu", *, iters: int | None = None,
              warmup: int = 3, target_s: float = 0.2) -> dict[str, Any]:
    """Time one GEMM; a row with FLOPs, bytes, intensity, median time, TFLOP/s, GB/s and % of datasheet peak."""
    d = dtype_name(dtype)
    fn = make_gemm(shape.m, shape.n, shape.k, d, device)
    with _tf32(d == "tf32"):
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
    import pandas as pd
    from tqdm.auto import tqdm

    dtypes = [dtypes] if isinstance(dtypes, str) else list(dtypes)
    jobs = [(s, d) for d in dtypes for s in shapes]
    rows = [time_gemm(s, d, device, **kwargs) for s, d in tqdm(jobs, desc="GEMMs", disable=not progress, leave=False)]
    return pd.DataFrame(rows)


def sweep_llama(config: Any, tokens: list[int], dtype: str = "bf16", device: Any = "cpu", **kwargs: Any) -> "Any":
    """Time a Llama layer's GEMMs for each token count (M); adds a ``tokens`` column."""
    shapes = [s for t in tokens for s in llama_layer_shapes(config, t)]
    df = sweep(shapes, dtype, device, **kwargs)
    df.insert(1, "tokens", df["m"])
    return df


# ---------------------------------------------------------------------------------------------------
# Maximum achievable matmul (MAMF) search
# ---------------------------------------------------------------------------------------------------

@dataclass
class MamfResult:
    """Best GEMM throughput found within a time budget, re-measured with more iterations."""

    device_name: str
    dtype: str
    best_shape: GemmShape
    best_tflops: float  # median of the confirmation run of the best shape
    peak_tflops: float | None  # dense datasheet peak, None without a datasheet entry
    elapsed_s: float
    trials: Any  # DataFrame: every shape tried during the search (phase, m, n, k, tflops)
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def pct_of_peak(self) -> float | None:
        return 100 * self.best_tflops / self.peak_tflops if self.peak_tflops else None

    def summary(self) -> dict[str, Any]:
        return {"device_name": self.device_name, "dtype": self.dtype, "best_shape": self.best_shape.name,
                "best_tflops": self.best_tflops, "peak_tflops": self.peak_tflops, "pct_of_peak": self.pct_of_peak,
                "shapes_tried": len(self.trials), "elapsed_s": self.elapsed_s}


def _seed_shapes(lo: int, hi: int, align: int, sms: int | None) -> list[tuple[int, int, int]]:
    """Starting points: squares across the range, a few aspect ratios, and wave-aligned outputs."""
    def snap(x: float) -> int:
        return int(min(hi, max(lo, round(x / align) * align)))

    seeds = [(snap(s),) * 3 for s in (lo, (lo + hi) / 4, (lo + hi) / 2, 3 * (lo + hi) / 4, hi)]
    mid = snap((lo + hi) / 2)
    seeds += [(mid, mid, snap(mid / 2)), (mid, snap(mid * 1.5), snap(mid / 2)), (snap(hi), snap(hi), snap(mid / 2))]
    if sms:  # outputs whose 128x256 tiles fill whole waves of SMs: no idle SMs in the last wave
        for waves in (4, 8, 12):
            for a in range(max(1, lo // 128), hi // 128 + 1):
                tiles = waves * sms
                if tiles % a == 0 and lo <= 256 * (tiles // a) <= hi and 128 * a % align == 0:
                    seeds.append((128 * a, 256 * (tiles // a), mid))
                    break
    return list(dict.fromkeys(seeds))


def max_achievable_matmul(device: Any = None, dtype: str | None = None, *, time_budget_s: float | None = None,
                          lo: int | None = None, hi: int | None = None, align: int | None = None,
                          iters: int | None = None, confirm_iters: int | None = None,
                          progress: bool = True) -> MamfResult:
    """Search for the fastest GEMM shape on ``device`` within ``time_budget_s`` (a smarter mamf-finder).

    1. **Clock warm-up**: a few seconds of large matmuls so the GPU reaches its sustained clock.
    2. **Seeds**: squares across ``lo..hi``, a few rectangles, and outputs that fill whole waves of SMs.
    3. **Hill climbing**: from the best shape so far, move one dimension by ±8, ±4, ±2, ±1 alignment
       steps; keep any improvement; when no move helps, shrink the step; stop when the budget is spent.
    4. **Confirmation**: the three best shapes are timed again with more iterations and the best
       *median* is reported, so a lucky short measurement cannot win.

    All dimensions are multiples of ``align`` (256 on GPUs: tensor-core tiles never straddle an edge).
    Defaults: GPU bf16, 2048-16384, 50 s budget; CPU fp32, 128-1024, 6 s.
    """
    import numpy as np
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from smml_lib.perf.environment import device_name as _device_name
    from smml_lib.perf.hardware import default_device

    dev = torch.device(device) if device is not None else default_device()
    gpu = dev.type == "cuda"
    d = dtype_name(dtype or ("bf16" if gpu else "fp32"))
    budget = time_budget_s if time_budget_s is not None else (50.0 if gpu else 6.0)
    lo, hi = lo or (2048 if gpu else 128), hi or (16384 if gpu else 1024)
    align = align or (256 if gpu else 64)
    iters = iters or (20 if gpu else 3)
    confirm_iters = confirm_iters or (100 if gpu else 10)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count if gpu else None
    t_start = time.perf_counter()
    deadline = t_start + 0.85 * budget  # the rest is kept for the confirmation runs
    if gpu:  # 1. ramp the clocks up: ~5% of the budget, at most 3 s
        fn = make_gemm(8192, 8192, 8192, d, dev)
        with _tf32(d == "tf32"):
            while time.perf_counter() < t_start + min(3.0, 0.05 * budget):
                fn()
                torch.cuda.synchronize(dev)
        del fn

    tried: dict[tuple[int, int, int], float] = {}
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=round(budget), desc=f"MAMF search ({d})", unit="s", disable=not progress, leave=False)

    def measure(mnk: tuple[int, int, int], phase: str) -> float:
        if mnk in tried:
            return tried[mnk]
        fn = make_gemm(*mnk, d, dev)
        with _tf32(d == "tf32"):
            t = benchmark(fn, iters=iters, warmup=2, device=dev, dtype=d, label="x".join(map(str, mnk)))
        tried[mnk] = t.tflops(gemm_flops(*mnk))
        rows.append({"phase": phase, "m": mnk[0], "n": mnk[1], "k": mnk[2], "tflops": tried[mnk],
                     "spread": t.spread, "t_s": time.perf_counter() - t_start})
        bar.update(round(time.perf_counter() - t_start) - bar.n)
        return tried[mnk]

    for mnk in _seed_shapes(lo, hi, align, sms):  # 2. seeds
        if time.perf_counter() > deadline:
            break
        measure(mnk, "seed")
    cur = max(tried, key=tried.get)  # the point we climb from (the best overall is read from `tried` at the end)
    rng = np.random.default_rng(0)
    step = 8
    while time.perf_counter() < deadline:  # 3. hill climbing
        moves = [tuple(min(hi, max(lo, v + sign * step * align)) if i == axis else v for i, v in enumerate(cur))
                 for axis in range(3) for sign in (1, -1)]
        improved = False
        for mnk in rng.permutation(np.array(moves)).tolist():
            if time.perf_counter() > deadline:
                break
            if measure(tuple(mnk), f"climb ±{step}") > tried[cur]:
                cur, improved = tuple(mnk), True
        if improved:
            continue
        if step > 1:
            step //= 2
            continue
        # converged at the finest step: jump to a random unexplored shape near one of the five best, climb from there
        top = sorted(tried, key=tried.get, reverse=True)[:5]
        base = top[int(rng.integers(len(top)))]
        cur = tuple(int(min(hi, max(lo, v + int(rng.integers(-8, 9)) * align))) for v in base)
        measure(cur, "jump")
        step = 4
    # 4. confirmation of the top three with more iterations
    confirmed: dict[tuple[int, int, int], float] = {}
    env: dict[str, Any] = {}
    ranked = sorted(tried, key=tried.get, reverse=True)[:3]
    for i, mnk in enumerate(ranked):
        # as many iterations as the rest of the budget allows (at least 10): a big GEMM on a slow GPU takes
        # ~0.1 s per call, and 3 x 100 of them would overrun the budget by half a minute
        per_call_s = gemm_flops(*mnk) / (tried[mnk] * 1e12)
        share_s = max(0.0, t_start + budget - time.perf_counter()) / (len(ranked) - i)
        n = int(max(10, min(confirm_iters, share_s / per_call_s)))
        fn = make_gemm(*mnk, d, dev)
        with _tf32(d == "tf32"):
            t = benchmark(fn, iters=n, warmup=3, device=dev, dtype=d)
        confirmed[mnk] = t.tflops(gemm_flops(*mnk))
        env = t.env
        rows.append({"phase": "confirm", "m": mnk[0], "n": mnk[1], "k": mnk[2], "tflops": confirmed[mnk],
                     "spread": t.spread, "t_s": time.perf_counter() - t_start})
    bar.close()
    top = max(confirmed, key=confirmed.get)
    name = env.get("device_name") or _device_name(dev)
    return MamfResult(name, d, GemmShape(*top), confirmed[top], datasheet_peak_tflops(name, d),
                      time.perf_counter() - t_start, pd.DataFrame(rows), env)
