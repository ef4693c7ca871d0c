"""Collective benchmark: nccl-tests bandwidth formulas, and a real 2-rank gloo sweep."""

from __future__ import annotations

import pandas as pd
import pytest

from smml_lib.distributed import collectives
from smml_lib.distributed.launcher import launch


def test_bus_factors_and_sizes():
    assert collectives.bus_factor("all_reduce", 4) == pytest.approx(1.5)  # 2 (n-1) / n
    assert collectives.bus_factor("all_gather", 4) == pytest.approx(0.75)  # (n-1) / n
    assert collectives.bus_factor("reduce_scatter", 2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        collectives.bus_factor("broadcast", 2)
    assert [collectives.parse_size(s) for s in ("32K", "1G", "100")] == [32768, 2**30, 100]
    assert collectives.message_sizes(32 * 2**10, 2**30) == [2**15 * 4**i for i in range(8)] + [2**30]
    # 1 GB all-reduce over 4 GPUs at 20 GB/s bus bandwidth: 1e9 * 1.5 / 20e9 = 75 ms
    assert collectives.collective_time_s("all_reduce", 1e9, 4, 20.0) == pytest.approx(0.075)
    assert collectives.collective_time_s("all_reduce", 1e9, 1, 20.0) == 0.0


def test_summary_uses_slowest_rank():
    df = pd.DataFrame([{"op": "all_reduce", "size_bytes": 1000, "world_size": 2, "time_s": t, "spread": 0.1}
                       for t in (1e-6, 2e-6)])
    s = collectives.summarize(df)
    assert s["time_s"][0] == 2e-6
    assert s["algbw_gbps"][0] == pytest.approx(0.5) and s["busbw_gbps"][0] == pytest.approx(0.5)
    assert collectives.busbw_at(s, "all_reduce", 1000) == pytest.approx(0.5)


def test_gloo_sweep_two_ranks(tmp_path):
    df = launch("collectives", ["--max-bytes", "256K", "--iters", "3", "--warmup", "1"], nproc=2,
                timeout_s=120, run_dir=tmp_path, echo=False)
    assert set(df["op"]) == set(collectives.OPS) and set(df["rank"]) == {0, 1}
    s = collectives.summarize(df)
    assert len(s) == 3 * 3 and (s["busbw_gbps"] > 0).all() and (s["world_size"] == 2).all()
