"""Decode limits of a server (bandwidth, compute, KV memory) against hand-computed numbers for an L4.

    .venv/bin/pytest tests/test_serving_limits.py -q
"""

from __future__ import annotations

import math

import pytest

from smml_lib.models import anatomy
from smml_lib.perf import hardware
from smml_lib.serving import limits

L4 = hardware.lookup_spec("NVIDIA L4").spec
CFG = anatomy.preset_config("Llama-3.2-1B")
W = 2 * 1_235_814_400  # bf16 weight bytes of Llama-3.2-1B
KV = 2 * 16 * 8 * 64 * 2  # bytes per token: K and V x 16 layers x 8 KV heads x 64 dims x 2 bytes


def test_bandwidth_bound_at_batch_1_is_weights_over_bandwidth():
    row = limits.decode_roofline(CFG, L4, context_len=0, batches=[1]).iloc[0]
    assert row["step_bytes"] == pytest.approx(W)
    assert row["max_tokens_per_s"] == pytest.approx(300e9 / W)  # ~121 tokens/s
    assert row["bound"] == "memory" and row["kv_fits"]


def test_kv_cache_reads_grow_with_batch_and_context():
    df = limits.decode_roofline(CFG, L4, context_len=1024, batches=[16, 1024])
    assert df["step_bytes"].iloc[0] == pytest.approx(W + 16 * 1024 * KV)  # ~3.01 GB
    assert list(df["kv_fits"]) == [True, False]  # 570 sequences of 1,024 tokens fit, 1,024 do not
    assert (df["bound"] == "memory").all()


def test_kv_limit_matches_the_hand_count():
    assert limits.kv_limit_sequences(CFG, L4, "bf16", 2048) == int((0.9 * 24e9 - W) // (2048 * KV)) == 285
    assert limits.kv_limit_sequences(CFG, L4, "bf16", 4096) == 142


def test_compute_bound_batch_is_about_the_ridge_point_without_context_and_never_with_a_long_one():
    ridge = 121e12 / 300e9
    flops = anatomy.forward_flops_per_token(CFG, 0)
    expected = ridge * W / (flops - ridge * KV)  # the step also reads its one new token's KV
    assert limits.compute_bound_batch(CFG, L4, "bf16", 0) == pytest.approx(expected, rel=1e-6)
    assert 395 < expected < 415
    assert math.isinf(limits.compute_bound_batch(CFG, L4, "bf16", 1024))


def test_plot_marks_batches_that_do_not_fit():
    tables = {"context 4096": limits.decode_roofline(CFG, L4, context_len=4096)}
    path = limits.plot_decode_roofline(tables, name="test_decode_bound")
    assert path is not None and path.exists()


def test_decode_scaling_on_the_tiny_model(tiny_model):
    import torch

    threads = torch.get_num_threads()
    df = limits.decode_scaling(*tiny_model, [1, 4], new_tokens=4, prompt_tokens=8)
    assert list(df["batch_size"]) == [1, 4] and df["gain_vs_batch_1"].iloc[0] == pytest.approx(1.0)
    assert df["gain_vs_batch_1"].iloc[1] > 1.0  # four sequences per step beat one
    assert torch.get_num_threads() == threads  # restored


def test_measure_batching_gain_loads_measures_and_frees():
    df = limits.measure_batching_gain("tiny", [1, 2], device="cpu", new_tokens=3, prompt_tokens=4)
    assert list(df["batch_size"]) == [1, 2] and (df["decode_tokens_per_s"] > 0).all()
