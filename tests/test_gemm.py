"""GEMM arithmetic against hand-computed cases, Llama layer shapes, timing rows and the MAMF search on CPU."""

from __future__ import annotations

import pytest
import torch

from smml_lib.common import device
from smml_lib.models import anatomy, workload
from smml_lib.perf import gemm, mamf
from smml_lib.perf.gemm import GemmShape


def test_flops_bytes_and_intensity_by_hand():
    assert gemm.gemm_flops(2, 3, 4) == 48  # 2·M·N·K
    assert gemm.gemm_min_bytes(2, 3, 4, "fp32") == 4 * (2 * 4 + 4 * 3 + 2 * 3) == 104
    assert gemm.gemm_min_bytes(2, 3, 4, "bf16") == 52
    assert gemm.gemm_min_bytes(2, 3, 4, "fp8") == 1 * (8 + 12) + 2 * 6  # fp8 in, bf16 out
    assert gemm.arithmetic_intensity(2, 3, 4, "fp32") == pytest.approx(48 / 104)
    assert gemm.arithmetic_intensity(3072, 3072, 3072, "bf16") == pytest.approx(1024)  # n/3 for square bf16
    gemv_intensity = 2 * 4096**2 / (2 * (4096 + 4096**2 + 4096))  # FLOPs / bytes of x, W, y in bf16
    assert gemm.arithmetic_intensity(1, 4096, 4096, "bf16") == pytest.approx(gemv_intensity)
    assert GemmShape(8, 8, 8).name == "8x8x8" and GemmShape(1, 2, 3, "up").name == "up"


def test_dtype_names():
    assert device.dtype_name(torch.bfloat16) == "bf16" and device.dtype_name("float32") == "fp32"
    assert device.dtype_name("torch.float8_e4m3fn") == "fp8" and gemm.out_dtype_of("fp8") == "bf16"
    with pytest.raises(ValueError, match="use one of"):
        device.dtype_name("int3")
    with pytest.raises(ValueError, match="GEMMs here run in"):  # a real format, but not one a GEMM here times
        gemm.gemm_dtype("int4")


def test_llama_layer_shapes_match_the_config_and_flop_count():
    cfg = anatomy.preset_config("Llama-3.2-1B")
    shapes = {s.label: s for s in workload.llama_layer_shapes(cfg, tokens=16)}
    assert (shapes["q_proj"].m, shapes["q_proj"].n, shapes["q_proj"].k) == (16, 2048, 2048)
    assert (shapes["k_proj"].n, shapes["v_proj"].n) == (512, 512)  # 8 kv heads x 64
    assert (shapes["down_proj"].n, shapes["down_proj"].k) == (2048, 8192)
    assert (shapes["lm_head"].n, shapes["lm_head"].k) == (128256, 2048)
    # one token through every layer's GEMMs plus the head = the model's forward FLOPs at context 0
    per_layer = sum(s.flops for s in workload.llama_layer_shapes(cfg, 1, include_head=False))
    head = workload.llama_layer_shapes(cfg, 1)[-1].flops
    assert cfg["num_hidden_layers"] * per_layer + head == pytest.approx(anatomy.forward_flops_per_token(cfg, 0))


def test_wave_quantization_by_hand():
    w = gemm.wave_quantization(4096, 4096, sms=58)
    assert w["tiles"] == 1024 and w["waves"] == 18 and w["wave_efficiency"] == pytest.approx(1024 / (18 * 58))
    assert gemm.wave_quantization(128 * 58, 128, sms=58)["wave_efficiency"] == 1.0
    assert gemm.wave_quantization(129, 128, sms=58)["tiles"] == 2  # one row more: a second, almost empty tile


def test_make_gemm_computes_the_product():
    torch.manual_seed(0)
    fn = gemm.make_gemm(16, 32, 48, "fp32", "cpu")
    out = fn()
    assert out.shape == (16, 32) and out.dtype == torch.float32
    assert out.data_ptr() == fn().data_ptr()  # writes into one fixed output
    assert gemm.make_gemm(16, 16, 16, "fp8", "cpu")().dtype == torch.bfloat16
    with pytest.raises(ValueError, match="divisible by 16"):
        gemm.make_gemm(10, 16, 16, "fp8", "cpu")


def test_time_gemm_row_on_cpu():
    row = gemm.time_gemm(GemmShape(64, 64, 64), "fp32", "cpu", iters=3)
    assert row["flops"] == 2 * 64**3 and row["min_bytes"] == 4 * 3 * 64**2
    assert row["tflops"] == pytest.approx(row["flops"] / row["median_s"] / 1e12)
    assert row["peak_tflops"] is None and row["pct_of_peak"] is None  # a CPU has no datasheet entry
    assert row["env_device"] == "cpu" and row["device_name"]


def test_sweeps_return_one_row_per_shape_and_dtype():
    df = gemm.sweep(gemm.square_shapes([32, 64]), ["fp32", "bf16"], "cpu", iters=2, progress=False)
    assert len(df) == 4 and set(df["dtype"]) == {"fp32", "bf16"} and (df["tflops"] > 0).all()
    tiny = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 2}
    lf = workload.sweep_llama(tiny, [1, 8], "fp32", "cpu", iters=2, progress=False)
    assert len(lf) == 16 and list(lf["tokens"].unique()) == [1, 8]


def test_datasheet_peak_lookup():
    assert gemm.datasheet_peak_tflops("NVIDIA L4", "bf16") == 121
    assert gemm.datasheet_peak_tflops("NVIDIA H100 80GB HBM3", "fp8") == 1979
    assert gemm.datasheet_peak_tflops("NVIDIA A10G", "fp8") is None
    assert gemm.datasheet_peak_tflops("AMD EPYC 7R13", "fp32") is None


def test_mamf_search_respects_budget_alignment_and_confirms():
    res = mamf.max_achievable_matmul("cpu", "fp32", time_budget_s=1.5, lo=32, hi=160, align=32, progress=False)
    assert res.elapsed_s < 6.0  # the 1.5 s budget, plus the last size and the confirmation runs
    assert res.best_tflops > 0 and res.pct_of_peak is None
    assert all(v % 32 == 0 and 32 <= v <= 160 for v in (res.best_shape.m, res.best_shape.n, res.best_shape.k))
    phases = set(res.trials["phase"])
    assert "seed" in phases and "confirm" in phases
    assert (res.trials["phase"] == "confirm").sum() == 3
    assert res.summary()["best_shape"] == res.best_shape.name and res.env["device"] == "cpu"


def test_seed_shapes_are_aligned_and_include_wave_aligned_outputs():
    seeds = mamf.seed_shapes(mamf.MamfConfig(lo=2048, hi=16384, align=256), sms=132)
    assert all(v % 256 == 0 and 2048 <= v <= 16384 for s in seeds for v in s)
    waves = [gemm.wave_quantization(m, n, 132, (128, 256)) for m, n, _ in seeds]
    assert any(w["wave_efficiency"] == 1.0 for w in waves)


def test_mamf_confirmation_iterations_fit_the_rest_of_the_budget(monkeypatch):
    """Confirmation asks for 100,000 iterations; it gets what the remaining budget allows (at least 10)."""
    seen: list[int] = []
    real = mamf.benchmark

    def spy(fn, *args, iters=None, **kwargs):
        seen.append(iters)
        return real(fn, *args, iters=iters, **kwargs)

    monkeypatch.setattr(mamf, "benchmark", spy)
    res = mamf.max_achievable_matmul("cpu", "fp32", time_budget_s=1.0, lo=256, hi=512, align=256,
                                     confirm_iters=100_000, progress=False)
    n_confirm = int((res.trials["phase"] == "confirm").sum())
    assert n_confirm >= 1 and all(10 <= n < 100_000 for n in seen[-n_confirm:])
    assert res.elapsed_s < 4.0  # 1 s budget + one overrunning trial + at least 10 calls per confirmed shape
