"""Scaling-law helpers against hand-computed cases (Module 04 prices training runs with these)."""

from __future__ import annotations

import math

import pytest

from smml_lib.models import scaling
from smml_lib.models.anatomy import preset_config


def test_six_n_d():
    # 1e9 parameters x 2e10 tokens x 6 = 1.2e20 FLOPs
    assert scaling.training_flops(1e9, 2e10) == pytest.approx(1.2e20)


def test_chinchilla_recovers_chinchilla():
    # Chinchilla itself: 70e9 params, 1.4e12 tokens -> C = 6 * 70e9 * 1.4e12 = 5.88e23 FLOPs
    opt = scaling.chinchilla_optimal(5.88e23)
    assert opt.n_params == pytest.approx(70e9, rel=1e-9)  # sqrt(5.88e23 / 120) = sqrt(4.9e21) = 7e10
    assert opt.n_tokens == pytest.approx(1.4e12, rel=1e-9)
    assert opt.tokens_per_param == pytest.approx(20.0)
    with pytest.raises(ValueError):
        scaling.chinchilla_optimal(0)


def test_loss_fit_hand_computed():
    # 1.69 + 406.4 / 70e9**0.34 + 410.7 / 1.4e12**0.28 = 1.69 + 0.0835 + 0.1630 = 1.9365
    assert scaling.loss(70e9, 1.4e12) == pytest.approx(1.9365, abs=2e-3)


@pytest.mark.parametrize("fit", sorted(scaling.FITS))
def test_optimal_from_fit_is_constrained_minimum(fit):
    c = 1e21
    opt = scaling.optimal_from_fit(c, fit)
    assert scaling.training_flops(opt.n_params, opt.n_tokens) == pytest.approx(c)
    best = scaling.loss(opt.n_params, opt.n_tokens, fit)
    for f in (0.8, 1.25):  # moving along 6ND = C in either direction raises the loss
        n = opt.n_params * f
        assert scaling.loss(n, c / 6 / n, fit) > best


def test_mfu_time_and_gpu_hours():
    # 1000 tokens/s x 6e9 FLOPs/token on one GPU = 6e12 FLOP/s; / 121e12 = 0.04959
    assert scaling.mfu(1000, 6e9, 1, 121) == pytest.approx(6e12 / 121e12)
    # 1.2e20 / (4 GPUs x 121e12 x 0.4) = 619,834.7 s
    assert scaling.training_time_s(1.2e20, 4, 121, 0.4) == pytest.approx(619_834.7, rel=1e-6)
    # 1.2e20 / (121e12 x 0.4) / 3600 = 688.73 GPU-hours, whatever the GPU count
    assert scaling.gpu_hours(1.2e20, 121, 0.4) == pytest.approx(688.73, rel=1e-4)
    assert scaling.compute_for_gpu_hours(688.73, 121, 0.4) == pytest.approx(1.2e20, rel=1e-4)
    # tokens/s at 40 % MFU on 4 L4s for a 6e9-FLOP token: 4 * 121e12 * 0.4 / 6e9 = 32,266.7
    assert scaling.tokens_per_s(6e9, 4, 121, 0.4) == pytest.approx(32_266.67, rel=1e-6)
    with pytest.raises(ValueError):
        scaling.training_time_s(1e20, 1, 121, 40)  # a percentage where a fraction belongs


def test_train_flops_per_token_llama_1b():
    # Llama-3.2-1B: per layer attention 2*2048*2048 + 2*2048*512 = 10,485,760; MLP 3*2048*8192 = 50,331,648;
    # 16 layers = 973,078,528; head (tied, still a matmul) 128256*2048 = 262,668,288 -> 1,235,746,816 matmul weights
    matmul = 1_235_746_816
    attention = 12 * 16 * 1024 * 32 * 64  # 12 x layers x context x heads x head_dim = 402,653,184
    cfg = preset_config("Llama-3.2-1B")
    assert scaling.train_flops_per_token(cfg, 1024) == pytest.approx(6 * matmul + attention)


def test_budget_table():
    df = scaling.budget_table([100.0, 1000.0], peak_tflops=121, mfu_fraction=0.4)
    assert list(df["gpu_hours"]) == [100.0, 1000.0]
    # 10x the compute -> sqrt(10) x the parameters
    assert df["n_params"][1] / df["n_params"][0] == pytest.approx(math.sqrt(10))
    assert (df["n_tokens"] / df["n_params"]).round(6).eq(20).all()
