"""Roofline arithmetic by hand: ridge points, attainable TFLOP/s, critical batch, Llama step placement, plot."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from smml_lib.models import anatomy, workload
from smml_lib.perf import gemm, roofline
from smml_lib.perf.roofline import Roof


def test_ridge_and_attainable_by_hand():
    assert roofline.ridge_point(121, 300) == pytest.approx(403.33, rel=1e-4)  # L4 bf16
    assert roofline.attainable_tflops(10, 121, 300) == pytest.approx(3.0)  # 300 GB/s x 10 FLOP/B
    assert roofline.attainable_tflops(1000, 121, 300) == 121
    assert list(roofline.attainable_tflops([1, 1e6], 10, 1000)) == [1.0, 10.0]


def test_critical_batch_size_solves_for_the_ridge():
    m = roofline.critical_batch_size(100, n=1000, k=1000, dtype="fp32")
    assert m == pytest.approx(100 * 4 * 1e6 / (2e6 - 100 * 8000))  # 333.3
    assert gemm.arithmetic_intensity(m, 1000, 1000, "fp32") == pytest.approx(100)
    assert roofline.critical_batch_size(1e6, 100, 100, "bf16") == float("inf")  # can never reach that ridge
    # big weight: close to ridge x bytes / 2
    assert roofline.critical_batch_size(403, 2**16, 2**16, "bf16") == pytest.approx(403, rel=0.02)


def test_roof_classification():
    roof = Roof("x", 100, 1000, "measured", "fp32")  # ridge 100 FLOP/B
    assert roof.ridge_point == 100 and roof.bound(10) == "memory-bound" and roof.bound(500) == "compute-bound"
    df = roofline.classify(pd.DataFrame({"intensity": [10, 500], "tflops": [5, 50]}), roof)
    assert list(df["attainable_tflops"]) == [10, 100] and list(df["pct_of_attainable"]) == [50, 50]


def test_datasheet_and_measured_roofs():
    l4 = roofline.datasheet_roof("NVIDIA L4", "bf16")
    assert (l4.peak_tflops, l4.bandwidth_gbs, l4.kind) == (121, 300, "datasheet")
    assert roofline.datasheet_roof("AMD EPYC", "bf16") is None
    assert roofline.datasheet_roof("NVIDIA T4", "bf16") is None  # T4 has no bf16
    ceil = SimpleNamespace(device_name="NVIDIA L4", matmul_dtype="bf16", matmul_tflops=90.0, copy_gbps=250.0)
    rs = roofline.roofs(ceil)
    assert [r.kind for r in rs] == ["measured", "datasheet"] and rs[0].ridge_point == pytest.approx(360)
    cpu = SimpleNamespace(device_name="AMD EPYC", matmul_dtype="fp32", matmul_tflops=0.2, copy_gbps=10.0)
    assert [r.kind for r in roofline.roofs(cpu)] == ["measured"]  # CPU: measured ceilings only
    assert len(roofline.roofs_frame(rs)) == 2


def test_llama_step_points():
    cfg = anatomy.preset_config("Llama-3.2-1B")
    df = workload.llama_step_points(cfg, "bf16", batch_sizes=[1, 64], context_len=0, prompt_tokens=512)
    dec1 = df[(df.phase == "decode") & (df.batch_size == 1)].iloc[0]
    # batch 1, no context: 2 FLOP per weight, 2 bytes per weight -> intensity just under 1
    assert 0.9 < dec1.intensity < 1.0
    dec64 = df[(df.phase == "decode") & (df.batch_size == 64)].iloc[0]
    assert dec64.intensity == pytest.approx(64 * dec1.intensity, rel=0.01)
    pre = df[(df.phase == "prefill") & (df.batch_size == 1)].iloc[0]
    assert pre.intensity > 400 and pre.tokens == 512
    long_ctx = workload.llama_step_points(cfg, "bf16", batch_sizes=[64], context_len=4096)
    assert long_ctx.intensity.iloc[0] < dec64.intensity  # the KV cache read adds bytes


def test_plot_roofline_writes_a_png(tmp_path, monkeypatch):
    monkeypatch.setenv("SMML_OUTPUT_DIR", str(tmp_path))
    pts = pd.DataFrame({"intensity": [1, 100, 1000], "tflops": [0.2, 20, 80], "label": ["a", "b", "c"],
                        "dtype": ["bf16"] * 3})
    roofline.plot_roofline(pts, [Roof("ds", 121, 300, "datasheet", "bf16"), Roof("m", 90, 250, "measured", "bf16")],
                           hue="dtype", name="test_roofline")
    assert (tmp_path / "figures" / "test_roofline.png").stat().st_size > 5000


def test_prefill_flops_closed_form_matches_the_sum():
    cfg = anatomy.preset_config("Llama-3.2-1B")
    per_token = sum(anatomy.forward_flops_per_token(cfg, t) for t in range(37))
    assert workload.prefill_flops(cfg, 37) == pytest.approx(per_token)


def test_decode_critical_batch_reaches_the_ridge():
    cfg = anatomy.preset_config("Llama-3.2-1B")
    b = workload.decode_critical_batch(cfg, "bf16", ridge=403, context_len=16)
    pts = workload.llama_step_points(cfg, "bf16", batch_sizes=[int(b) - 1, int(b) + 1], context_len=16)
    assert pts["intensity"].iloc[0] < 403 < pts["intensity"].iloc[1]  # the step crosses the ridge at b
    assert 400 < b < 600
    # at 256 tokens of context each sequence's KV reads (8.4 MB) outweigh its FLOPs / ridge: never compute-bound
    assert workload.decode_critical_batch(cfg, "bf16", ridge=403, context_len=256) == float("inf")


def test_raise_roof_only_lifts_measured_roofs():
    measured = Roof("measured fp32", 1.0, 10.0, "measured", "fp32")
    lifted = roofline.raise_roof(measured, [0.5, 2.0])
    assert lifted.peak_tflops == 2.0 and lifted.bandwidth_gbs == 10.0 and "best seen" in lifted.label
    assert roofline.raise_roof(measured, [0.5]) is measured  # nothing beat it
    sheet = Roof("ds", 1.0, 10.0, "datasheet", "bf16")
    assert roofline.raise_roof(sheet, [5.0]) is sheet  # datasheets do not move
