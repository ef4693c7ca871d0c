"""The maximum achievable matmul (MAMF): the best TFLOP/s this device really delivers, found within a budget.

A datasheet peak is what the math units could do if every cycle issued a tensor-core instruction; no
real kernel gets there, and how close it gets depends on the shape (tile and wave quantization, the
clock under sustained load). stas00's mamf-finder times a grid of shapes; ``max_achievable_matmul``
searches smarter within a time budget, and its best *median* is the honest denominator for every later
"percent of peak" in the course.

1. **Clock warm-up**: a few seconds of large matmuls so the GPU reaches its sustained clock.
2. **Seeds**: squares across ``lo..hi``, a few rectangles, and outputs that fill whole waves of SMs.
3. **Hill climbing**: from the best shape so far, move one dimension by ±8, ±4, ±2, ±1 alignment steps;
   keep any improvement; when no move helps, shrink the step; at the finest step jump to a random shape
   near one of the best and climb again; stop when the search's share of the budget is spent.
4. **Confirmation**: the best shapes are timed again with more iterations and the best *median* is
   reported, so a lucky short measurement cannot win.

Every knob is a named field of ``MamfConfig``; ``MamfConfig.for_device`` holds the GPU and CPU defaults.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from smml_lib.common.device import device_name, resolve_device
from smml_lib.perf.gemm import GemmShape, allow_tf32, datasheet_peak_tflops, gemm_dtype, gemm_flops, make_gemm
from smml_lib.perf.timing import benchmark

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class MamfConfig:
    """How the search spends its budget. Defaults are the GPU ones; ``for_device`` gives the CPU's."""

    dtype: str = "bf16"
    time_budget_s: float = 50.0
    lo: int = 2048  # smallest M, N, K tried
    hi: int = 16384  # largest M, N, K tried
    align: int = 256  # every dimension a multiple of this: tensor-core tiles never straddle an edge
    iters: int = 20  # timed calls per shape while searching
    warmup: int = 2  # untimed calls per shape while searching
    search_share: float = 0.85  # of the budget for seeds and climbing; the rest confirms
    clock_warmup_share: float = 0.05  # of the budget spent ramping the GPU clock up first ...
    clock_warmup_max_s: float = 3.0  # ... but never longer than this
    clock_warmup_size: int = 8192  # the square matmul run during the clock warm-up
    first_step: int = 8  # first hill-climbing step, in ``align`` units (halved when no move helps)
    restart_step: int = 4  # step after a random jump
    jump_radius: int = 8  # a jump moves each dimension up to this many ``align`` units
    jump_pool: int = 5  # jumps start near one of this many best shapes
    confirm_top: int = 3  # shapes re-timed in the confirmation
    confirm_iters: int = 100  # most timed calls per confirmed shape (fewer if the budget runs out) ...
    min_confirm_iters: int = 10  # ... but never fewer than this
    confirm_warmup: int = 3
    wave_counts: tuple[int, ...] = (4, 8, 12)  # seeds whose output tiles fill this many whole waves of SMs
    wave_tile: tuple[int, int] = (128, 256)  # the output tile those seeds assume
    seed: int = 0  # the random generator of the climb's order and jumps

    @classmethod
    def for_device(cls, device: Any = None, dtype: str | None = None, **overrides: Any) -> "MamfConfig":
        """GPU: bf16, 2048-16384, 50 s. CPU: fp32, 128-1024 in steps of 64, 6 s, few iterations."""
        if resolve_device(device).type == "cuda":
            base = cls()
        else:
            base = cls(dtype="fp32", time_budget_s=6.0, lo=128, hi=1024, align=64, iters=3, confirm_iters=10)
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(base, dtype=gemm_dtype(dtype or base.dtype), **given)


@dataclass
class MamfResult:
    """Best GEMM throughput found within a time budget, re-measured with more iterations."""

    device_name: str
    dtype: str
    best_shape: GemmShape
    best_tflops: float  # median of the confirmation run of the best shape
    peak_tflops: float | None  # dense datasheet peak, None without a datasheet entry
    elapsed_s: float
    trials: pd.DataFrame  # every shape tried during the search (phase, m, n, k, tflops, spread, t_s)
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def pct_of_peak(self) -> float | None:
        return 100 * self.best_tflops / self.peak_tflops if self.peak_tflops else None

    def summary(self) -> dict[str, Any]:
        return {"device_name": self.device_name, "dtype": self.dtype, "best_shape": self.best_shape.name,
                "best_tflops": self.best_tflops, "peak_tflops": self.peak_tflops, "pct_of_peak": self.pct_of_peak,
                "shapes_tried": len(self.trials), "elapsed_s": self.elapsed_s}


def seed_shapes(cfg: MamfConfig, sms: int | None) -> list[Shape]:
    """Starting points: squares across the range, a few aspect ratios, and outputs filling whole waves."""
    lo, hi, align = cfg.lo, cfg.hi, cfg.align

    def snap(x: float) -> int:
        return int(min(hi, max(lo, round(x / align) * align)))

    seeds = [(snap(s),) * 3 for s in (lo, (lo + hi) / 4, (lo + hi) / 2, 3 * (lo + hi) / 4, hi)]
    mid = snap((lo + hi) / 2)
    seeds += [(mid, mid, snap(mid / 2)), (mid, snap(mid * 1.5), snap(mid / 2)), (snap(hi), snap(hi), snap(mid / 2))]
    if sms:  # outputs whose tiles fill whole waves of SMs: no idle SMs in the last wave
        tm, tn = cfg.wave_tile
        for waves in cfg.wave_counts:
            for a in range(max(1, lo // tm), hi // tm + 1):
                tiles = waves * sms
                if tiles % a == 0 and lo <= tn * (tiles // a) <= hi and tm * a % align == 0:
                    seeds.append((tm * a, tn * (tiles // a), mid))
                    break
    return list(dict.fromkeys(seeds))


class _Search:
    """The state of one search: every shape timed so far, and the clock."""

    def __init__(self, cfg: MamfConfig, dev: torch.device, progress: bool) -> None:
        self.cfg, self.dev = cfg, dev
        self.t_start = time.perf_counter()
        self.deadline = self.t_start + cfg.search_share * cfg.time_budget_s
        self.tried: dict[Shape, float] = {}
        self.rows: list[dict[str, Any]] = []
        self.env: dict[str, Any] = {}
        self.rng = np.random.default_rng(cfg.seed)
        self.bar = tqdm(total=round(cfg.time_budget_s), desc=f"MAMF search ({cfg.dtype})", unit="s",
                        disable=not progress, leave=False)

    def time_left(self) -> bool:
        return time.perf_counter() < self.deadline

    def _time(self, mnk: Shape, iters: int, warmup: int, phase: str) -> float:
        fn = make_gemm(*mnk, self.cfg.dtype, self.dev)
        with allow_tf32(self.cfg.dtype == "tf32"):
            t = benchmark(fn, iters=iters, warmup=warmup, device=self.dev, dtype=self.cfg.dtype,
                          label="x".join(map(str, mnk)))
        tflops = t.tflops(gemm_flops(*mnk))
        self.env = t.env
        self.rows.append({"phase": phase, "m": mnk[0], "n": mnk[1], "k": mnk[2], "tflops": tflops,
                          "spread": t.spread, "t_s": time.perf_counter() - self.t_start})
        self.bar.update(round(time.perf_counter() - self.t_start) - self.bar.n)
        return tflops

    def measure(self, mnk: Shape, phase: str) -> float:
        if mnk not in self.tried:
            self.tried[mnk] = self._time(mnk, self.cfg.iters, self.cfg.warmup, phase)
        return self.tried[mnk]

    def clamp(self, v: int) -> int:
        return int(min(self.cfg.hi, max(self.cfg.lo, v)))

    def warm_clocks(self) -> None:
        """Large matmuls until the GPU runs at its sustained clock (a cold GPU starts lower)."""
        cfg = self.cfg
        n = cfg.clock_warmup_size
        fn = make_gemm(n, n, n, cfg.dtype, self.dev)
        until = self.t_start + min(cfg.clock_warmup_max_s, cfg.clock_warmup_share * cfg.time_budget_s)
        with allow_tf32(cfg.dtype == "tf32"):
            while time.perf_counter() < until:
                fn()
                torch.cuda.synchronize(self.dev)

    def climb(self) -> None:
        """Hill climbing from the best seed, with random jumps once it converges, until the deadline."""
        cfg = self.cfg
        cur = max(self.tried, key=self.tried.get)
        step = cfg.first_step
        while self.time_left():
            moves = [tuple(self.clamp(v + sign * step * cfg.align) if i == axis else v for i, v in enumerate(cur))
                     for axis in range(3) for sign in (1, -1)]
            improved = False
            for mnk in self.rng.permutation(np.array(moves)).tolist():
                if not self.time_left():
                    break
                if self.measure(tuple(mnk), f"climb ±{step}") > self.tried[cur]:
                    cur, improved = tuple(mnk), True
            if improved:
                continue
            if step > 1:
                step //= 2
                continue
            top = sorted(self.tried, key=self.tried.get, reverse=True)[:cfg.jump_pool]
            base = top[int(self.rng.integers(len(top)))]
            r = cfg.jump_radius
            cur = tuple(self.clamp(v + int(self.rng.integers(-r, r + 1)) * cfg.align) for v in base)
            self.measure(cur, "jump")
            step = cfg.restart_step

    def confirm(self) -> dict[Shape, float]:
        """Re-time the best shapes with as many iterations as the rest of the budget allows."""
        cfg = self.cfg
        ranked = sorted(self.tried, key=self.tried.get, reverse=True)[:cfg.confirm_top]
        confirmed = {}
        for i, mnk in enumerate(ranked):
            # a big GEMM on a slow GPU takes ~0.1 s per call: 3 x 100 of them would overrun a 45 s budget by ~30 s
            per_call_s = gemm_flops(*mnk) / (self.tried[mnk] * 1e12)
            share_s = max(0.0, self.t_start + cfg.time_budget_s - time.perf_counter()) / (len(ranked) - i)
            n = int(max(cfg.min_confirm_iters, min(cfg.confirm_iters, share_s / per_call_s)))
            confirmed[mnk] = self._time(mnk, n, cfg.confirm_warmup, "confirm")
        return confirmed


def max_achievable_matmul(device: Any = None, dtype: str | None = None, *, config: MamfConfig | None = None,
                          progress: bool = True, **overrides: Any) -> MamfResult:
    """Search for the fastest GEMM shape on ``device`` within the budget (see the module docstring).

    Args:
        device: torch device (default: first GPU, else CPU).
        dtype: GEMM dtype (default bf16 on GPUs, fp32 on the CPU).
        config: the whole ``MamfConfig``; or give single fields as keywords (``time_budget_s=30``, ``lo``,
            ``hi``, ``align``, ``iters``, ``confirm_iters``...) on top of the device's defaults.
    """
    dev = resolve_device(device)
    cfg = config or MamfConfig.for_device(dev, dtype, **overrides)
    search = _Search(cfg, dev, progress)
    if dev.type == "cuda":
        search.warm_clocks()
    sms = torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else None
    for mnk in seed_shapes(cfg, sms):
        if not search.time_left():
            break
        search.measure(mnk, "seed")
    search.climb()
    confirmed = search.confirm()
    search.bar.close()
    top = max(confirmed, key=confirmed.get)
    name = search.env.get("device_name") or device_name(dev)
    return MamfResult(name, cfg.dtype, GemmShape(*top), confirmed[top], datasheet_peak_tflops(name, cfg.dtype),
                      time.perf_counter() - search.t_start, pd.DataFrame(search.rows), search.env)
