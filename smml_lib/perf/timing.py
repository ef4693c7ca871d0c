"""The one timing harness every module uses.

Timing GPU code naively (``time.time()`` around a call) measures how fast Python *queues* work,
not how fast the GPU does it: CUDA launches are asynchronous. This harness does it properly:

- **GPU**: one pair of CUDA events around each call, recorded on the stream, read after a single
  synchronize at the end. Before each call (outside the events) a buffer of at least twice the L2
  cache is overwritten, so every iteration starts with cold caches, as a real model's layers do.
- **CPU**: ``time.perf_counter`` around each call, with the garbage collector paused.
- **Both**: warm-up calls first (kernel selection, allocator growth, lazy initialisation), each timed
  on its own; unless ``iters`` is given, the number of timed calls is chosen from the *steady* warm-up
  calls (the first one pays one-off costs) to fill about ``target_s`` seconds. The result keeps every
  sample plus median, mean, p10/p90 and spread, and the environment (device, driver, torch/CUDA
  versions, dtype, SM/memory clocks from NVML) it was measured in.

Report the median: it ignores the odd slow iteration (a context switch, a clock ramp) that
drags a mean. Quote p10-p90 as the spread; when two versions differ by less than that, the
difference is noise.

Example::

    t = benchmark(torch.mm, a, b, label="mm 4096")
    print(t.median_s, t.tflops(2 * 4096**3))
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch

from smml_lib.perf.environment import environment

MIN_FLUSH_BYTES = 32 * 2**20  # flush buffer never smaller than 32 MiB


@dataclass
class Timing:
    """Result of ``benchmark``: all samples in seconds plus summary statistics and environment."""

    label: str
    samples_s: list[float]
    method: str  # "cuda_events" or "perf_counter"
    warmup: int
    l2_flush_bytes: int = 0
    env: dict[str, Any] = field(default_factory=dict)
    warmup_s: list[float] = field(default_factory=list)  # each warm-up call, synchronized (first = cold)

    @property
    def iters(self) -> int:
        return len(self.samples_s)

    @property
    def median_s(self) -> float:
        return float(np.median(self.samples_s))

    @property
    def mean_s(self) -> float:
        return float(np.mean(self.samples_s))

    @property
    def p10_s(self) -> float:
        return float(np.percentile(self.samples_s, 10))

    @property
    def p90_s(self) -> float:
        return float(np.percentile(self.samples_s, 90))

    @property
    def min_s(self) -> float:
        return float(np.min(self.samples_s))

    @property
    def std_s(self) -> float:
        return float(np.std(self.samples_s))

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative noise of this measurement."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s > 0 else float("nan")

    def tflops(self, flops: float) -> float:
        """Achieved TFLOP/s for ``flops`` floating-point operations per call (at the median time)."""
        return flops / self.median_s / 1e12

    def gbps(self, num_bytes: float) -> float:
        """Achieved GB/s for ``num_bytes`` moved per call (at the median time)."""
        return num_bytes / self.median_s / 1e9

    def summary(self) -> dict[str, Any]:
        """Flat dict without the samples: label, statistics in seconds, method and environment."""
        row = {
            "label": self.label, "median_s": self.median_s, "mean_s": self.mean_s, "p10_s": self.p10_s,
            "p90_s": self.p90_s, "min_s": self.min_s, "std_s": self.std_s, "iters": self.iters,
            "warmup": self.warmup, "method": self.method, "l2_flush_bytes": self.l2_flush_bytes,
        }
        row.update({f"env_{k}": v for k, v in self.env.items()})
        return row

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device_of(args: tuple, device: Any) -> Any:
    if device is not None:
        return torch.device(device)
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


def l2_flush_bytes(device: Any) -> int:
    """Size of the cache-flush buffer for a CUDA device: at least twice its L2 cache."""
    props = torch.cuda.get_device_properties(device)
    l2 = int(getattr(props, "L2_cache_size", 0) or 0)
    return max(2 * l2, MIN_FLUSH_BYTES)


def pick_iters(one_call_s: float, target_s: float, min_iters: int, max_iters: int) -> int:
    """Timed calls needed to fill ``target_s`` at ``one_call_s`` per call, clamped to ``min_iters..max_iters``."""
    if one_call_s <= 0:
        return max_iters
    return int(min(max_iters, max(min_iters, round(target_s / one_call_s))))


def steady_call_s(warmup_s: list[float]) -> float:
    """Estimate of one steady-state call from the warm-up call times.

    The first call usually pays one-off costs (cuBLAS heuristics, allocator growth, lazy imports), so it
    is dropped when there are later ones; the median of the rest ignores an odd slow call.
    """
    if not warmup_s:
        return 0.0
    rest = warmup_s[1:] if len(warmup_s) > 1 else warmup_s
    return float(np.median(rest))


def _flush_buffer(dev: Any) -> Any:
    """An int8 buffer of at least twice the L2 cache of CUDA device ``dev`` (overwritten before each call)."""
    return torch.empty(l2_flush_bytes(dev), dtype=torch.int8, device=dev)


def _dtype_of(args: tuple, dtype: Any) -> Any:
    if dtype is not None:
        return dtype

    for a in args:
        if isinstance(a, torch.Tensor):
            return a.dtype
    return None


def benchmark(
    fn: Callable[..., Any],
    *args: Any,
    iters: int | None = None,
    warmup: int = 3,
    target_s: float = 0.5,
    min_iters: int = 5,
    max_iters: int = 500,
    device: Any = None,
    flush_l2: bool = True,
    label: str = "",
    dtype: Any = None,
    **kwargs: Any,
) -> Timing:
    """Time ``fn(*args, **kwargs)`` on its device and return a ``Timing``.

    Args:
        fn: the work to time. It must do the same work on every call.
        iters: timed calls; ``None`` picks enough to fill about ``target_s`` seconds (within
            ``min_iters``..``max_iters``) from the steady warm-up calls (see ``steady_call_s``).
        warmup: untimed calls first (at least 1).
        device: where the work runs; default: the device of the first tensor argument, else CPU.
        flush_l2: on CUDA, overwrite a buffer of at least twice the L2 cache before each call.
        label: a name for the result (shown in tables and plots).
        dtype: recorded in the environment (default: the dtype of the first tensor argument).

    On CUDA the events are recorded on the current stream of ``device``; work that ``fn`` puts on other
    streams must be joined to it inside ``fn``.
    """
    if iters is not None and iters < 1:
        raise ValueError(f"iters={iters}: need at least one timed call (or None to choose automatically)")
    dev = _device_of(args, device)
    warmup = max(1, warmup)
    on_cuda = dev.type == "cuda"
    dtype = _dtype_of(args, dtype)
    with torch.cuda.device(dev) if on_cuda else nullcontext():
        flush_buf = _flush_buffer(dev) if on_cuda and flush_l2 else None

        # Warm-up, each call timed on its own (synchronized) to choose the iteration count.
        warm_s: list[float] = []
        for _ in range(warmup):
            if on_cuda:
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            if on_cuda:
                torch.cuda.synchronize(dev)
            warm_s.append(time.perf_counter() - t0)
        n = iters if iters is not None else pick_iters(steady_call_s(warm_s), target_s, min_iters, max_iters)

        samples: list[float] = []
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if on_cuda:
                starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
                ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
                for i in range(n):
                    if flush_buf is not None:
                        flush_buf.zero_()  # evict L2: the next call reads its inputs from memory
                    starts[i].record()
                    fn(*args, **kwargs)
                    ends[i].record()
                torch.cuda.synchronize(dev)
                samples = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]  # ms -> s
            else:
                for _ in range(n):
                    t = time.perf_counter()
                    fn(*args, **kwargs)
                    samples.append(time.perf_counter() - t)
        finally:
            if gc_was_enabled:
                gc.enable()
    return Timing(
        label=label or getattr(fn, "__name__", "fn"),
        samples_s=samples,
        method="cuda_events" if on_cuda else "perf_counter",
        warmup=warmup,
        l2_flush_bytes=flush_buf.numel() if flush_buf is not None else 0,
        env=environment(dev, dtype),
        warmup_s=warm_s,
    )


@dataclass
class Stopwatch:
    """Wall time of one block of work (see ``stopwatch``)."""

    elapsed_s: float = float("nan")


@contextmanager
def stopwatch(device: Any = None) -> Iterator[Stopwatch]:
    """Time a single block once, synchronizing the GPU before and after.

    Use it for one-off costs that repetition would hide: a model load, the first call of a compiled
    function. Steady-state speed belongs to ``benchmark``.
    """
    dev = torch.device(device) if device is not None else None
    sync = dev is not None and dev.type == "cuda"
    sw = Stopwatch()
    if sync:
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    try:
        yield sw
    finally:
        if sync:
            torch.cuda.synchronize(dev)
        sw.elapsed_s = time.perf_counter() - t0


def timings_frame(timings: list[Timing], **extra_columns: list[Any]) -> "Any":
    """A DataFrame with one row per ``Timing`` (summary statistics plus environment columns)."""
    df = pd.DataFrame([t.summary() for t in timings])
    for name, values in extra_columns.items():
        df[name] = values
    return df
