"""The timing harness: statistics, iteration picking, warm-up, the CPU path, and the CUDA path with fake events."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from smml_lib.perf import timing
from smml_lib.perf.timing import Timing, benchmark, steady_call_s, stopwatch, timings_frame


def _t(samples, **kw) -> Timing:
    return Timing(label="x", samples_s=list(samples), method="perf_counter", warmup=1, **kw)


def test_statistics_match_hand_computed_values():
    t = _t([0.4, 0.1, 0.3, 0.2, 0.5])  # sorted: 0.1 .. 0.5
    assert t.iters == 5
    assert t.median_s == pytest.approx(0.3)
    assert t.mean_s == pytest.approx(0.3)
    assert t.min_s == pytest.approx(0.1)
    # numpy's default (linear) percentile: position 0.1 * (5 - 1) = 0.4 -> 0.1 + 0.4 * 0.1
    assert t.p10_s == pytest.approx(0.14)
    assert t.p90_s == pytest.approx(0.46)
    assert t.spread == pytest.approx((0.46 - 0.14) / 0.3)
    assert t.std_s == pytest.approx(math.sqrt(0.02))  # population std of 0.1..0.5


def test_median_resists_one_slow_outlier():
    t = _t([1.0, 1.0, 1.0, 1.0, 11.0])
    assert t.median_s == 1.0 and t.mean_s == pytest.approx(3.0)


def test_throughput_helpers_use_the_median():
    t = _t([2e-3, 1e-3, 3e-3])  # median 2 ms
    assert t.tflops(4e9) == pytest.approx(4e9 / 2e-3 / 1e12)  # 2 TFLOP/s
    assert t.gbps(1e6) == pytest.approx(0.5)


def test_summary_and_frame_carry_env_without_samples():
    t = _t([1.0, 2.0], env={"device_name": "dev", "dtype": "float32"})
    row = t.summary()
    assert row["env_device_name"] == "dev" and row["median_s"] == 1.5 and "samples_s" not in row
    df = timings_frame([t, _t([3.0])], size=[1, 2])
    assert list(df["size"]) == [1, 2] and list(df["median_s"]) == [1.5, 3.0]


def test_steady_call_drops_the_cold_first_call():
    assert steady_call_s([5.0, 1.0, 1.2, 0.8]) == pytest.approx(1.0)
    assert steady_call_s([2.0]) == 2.0
    assert steady_call_s([]) == 0.0


@pytest.mark.parametrize("one_call, expected", [(0.01, 50), (1.0, 5), (1e-6, 500), (0.0, 500)])
def test_pick_iters_fills_the_target_within_bounds(one_call, expected):
    assert timing.pick_iters(one_call, target_s=0.5, min_iters=5, max_iters=500) == expected


def test_warmup_and_iteration_counts_on_cpu():
    calls = []
    t = benchmark(lambda: calls.append(1), warmup=4, iters=7)
    assert len(calls) == 11 and t.iters == 7 and t.warmup == 4 and len(t.warmup_s) == 4
    assert t.method == "perf_counter" and t.l2_flush_bytes == 0
    with pytest.raises(ValueError, match="at least one"):
        benchmark(lambda: None, iters=0)


def test_automatic_iterations_ignore_a_slow_first_call():
    state = {"n": 0}

    def work():
        state["n"] += 1
        time.sleep(0.05 if state["n"] == 1 else 0.002)  # cold first call, then 2 ms

    t = benchmark(work, warmup=3, target_s=0.1, min_iters=2, max_iters=1000)
    # from the steady 2 ms calls: ~50 iterations (sleep overshoots a little); from the cold one it would be 2
    assert 15 <= t.iters <= 50


def test_cpu_path_measures_real_time_and_records_env():
    a = torch.randn(64, 64)
    t = benchmark(torch.mm, a, a, iters=5, label="mm64")
    assert t.label == "mm64" and all(s > 0 for s in t.samples_s)
    assert t.env["device"] == "cpu" and t.env["dtype"] == "float32" and t.env["torch"] == torch.__version__
    sleeper = benchmark(time.sleep, 0.01, warmup=1, iters=3)
    assert 0.009 < sleeper.median_s < 0.2


def test_stopwatch_times_one_block():
    with stopwatch() as sw:
        time.sleep(0.02)
    assert 0.015 < sw.elapsed_s < 0.5


class _FakeEvent:
    """Stands in for torch.cuda.Event: records host time; elapsed_time in ms like CUDA's."""

    recorded: list[float] = []

    def __init__(self, enable_timing: bool = False):
        assert enable_timing
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()
        _FakeEvent.recorded.append(self.t)

    def elapsed_time(self, end: "_FakeEvent") -> float:
        return (end.t - self.t) * 1e3


class _FakeFlush:
    def __init__(self, nbytes: int):
        self.nbytes, self.zeroed = nbytes, 0

    def zero_(self):
        self.zeroed += 1

    def numel(self) -> int:
        return self.nbytes


def test_cuda_path_with_fake_events(monkeypatch):
    """The CUDA branch: events around each call, one flush per timed call, one sync at the end, ms -> s."""
    syncs, flush = [], _FakeFlush(100 * 2**20)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda dev=None: syncs.append(dev))
    monkeypatch.setattr(torch.cuda, "device", lambda dev: __import__("contextlib").nullcontext())
    monkeypatch.setattr(timing, "_flush_buffer", lambda dev: flush)
    monkeypatch.setattr(timing, "environment", lambda dev, dtype: {"device": str(dev), "dtype": str(dtype)})
    calls = []
    t = benchmark(lambda: (calls.append(1), time.sleep(0.003)), warmup=2, iters=6, device="cuda:0", dtype="bf16")
    assert t.method == "cuda_events" and t.iters == 6 and len(calls) == 8
    assert flush.zeroed == 6 and t.l2_flush_bytes == 100 * 2**20
    assert len(syncs) == 2 * 2 + 1  # before/after each warm-up call, once after the timed loop
    assert all(0.0025 < s < 0.1 for s in t.samples_s)  # seconds, not milliseconds
    assert t.env == {"device": "cuda:0", "dtype": "bf16"}
    no_flush = benchmark(lambda: None, warmup=1, iters=2, device="cuda:0", flush_l2=False)
    assert no_flush.l2_flush_bytes == 0 and flush.zeroed == 6


def test_l2_flush_buffer_is_at_least_twice_l2(monkeypatch):
    class Props:
        L2_cache_size = 50 * 2**20

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: Props())
    assert timing.l2_flush_bytes("cuda:0") == 100 * 2**20
    Props.L2_cache_size = 4 * 2**20  # small L2: never below the 32 MiB floor
    assert timing.l2_flush_bytes("cuda:0") == timing.MIN_FLUSH_BYTES


def test_samples_are_plain_floats():
    t = benchmark(np.zeros, 10, iters=3)
    assert all(isinstance(s, float) for s in t.samples_s)
