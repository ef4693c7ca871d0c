"""Scaling-law arithmetic: compute of a training run, the compute-optimal model for a budget, and what it
costs in GPU time at a measured MFU.

- **Compute.** Training a dense transformer of N parameters on D tokens costs C ~ 6 N D FLOPs: 2 N per
  token forward (a multiply and an add per weight), 4 N backward (gradients for activations and for
  weights). Attention over the context adds 12 x layers x context x heads x head_dim per token
  (``train_flops_per_token``; PaLM's convention, causal masking not subtracted).
- **Compute-optimal size (Chinchilla).** Hoffmann et al. (2022) found that for a fixed C the loss is
  lowest when N and D grow together, about **20 tokens per parameter**: N = sqrt(C / 120), D = 20 N.
  Their parametric fit L(N, D) = E + A / N^alpha + B / D^beta gives the same answer from a formula
  (``loss`` / ``optimal_from_fit``); ``FITS`` holds the paper's constants and Epoch AI's 2024 re-fit.
- **Time and GPU-hours.** A GPU delivering ``peak_tflops`` at model-FLOPs utilisation ``mfu`` trains
  ``peak x mfu / flops_per_token`` tokens per second. MFU comes from a measurement (Lab 02-3 saves it);
  never assume the datasheet peak.

Every function takes and returns plain numbers in SI units (FLOPs, seconds, hours), so Module 04 can
turn the result into dollars with its own prices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from smml_lib.models.anatomy import forward_flops_per_token

CHINCHILLA_TOKENS_PER_PARAM = 20.0


@dataclass(frozen=True)
class LossFit:
    """L(N, D) = e + a / N**alpha + b / D**beta (N parameters, D training tokens; loss in nats/token)."""

    name: str
    e: float
    a: float
    b: float
    alpha: float
    beta: float
    source: str


FITS = {
    "hoffmann2022": LossFit("hoffmann2022", 1.69, 406.4, 410.7, 0.34, 0.28,
                            "Hoffmann et al. 2022, Training Compute-Optimal LLMs, eq. 10 (approach 3)"),
    "epoch2024": LossFit("epoch2024", 1.8172, 482.01, 2085.43, 0.3478, 0.3658,
                         "Besiroglu et al. 2024, Chinchilla Scaling: A replication attempt"),
}


def training_flops(n_params: float, n_tokens: float) -> float:
    """C = 6 N D: FLOPs to train ``n_params`` parameters on ``n_tokens`` tokens (attention left out).

    2 FLOPs per parameter per token forward, 4 backward (Kaplan et al. 2020). The float factor comes first, so
    the product is computed in floating point: numpy int64 products overflow past 9.2e18, and a 1B model on
    20B tokens is already 1.2e20. Works on numbers and on pandas/numpy columns alike.
    """
    return 6.0 * n_params * n_tokens


def train_flops_per_token(cfg: Any, seq_len: int) -> float:
    """Model FLOPs per trained token for a Llama config: 3 x forward (6N) plus attention over ``seq_len``.

    Activation checkpointing recomputes the forward (hardware FLOPs 4x forward) but MFU counts model
    FLOPs only, so the recomputation shows up as a lower MFU, as it should.
    """
    return 3.0 * forward_flops_per_token(cfg, context_len=seq_len)


@dataclass(frozen=True)
class ComputeOptimal:
    """A compute-optimal (N, D) pair for a compute budget."""

    compute_flops: float
    n_params: float
    n_tokens: float

    @property
    def tokens_per_param(self) -> float:
        return self.n_tokens / self.n_params


def chinchilla_optimal(compute_flops: float, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM) -> ComputeOptimal:
    """N and D that spend ``compute_flops`` with D = ``tokens_per_param`` x N: N = sqrt(C / (6 r))."""
    if compute_flops <= 0:
        raise ValueError("compute_flops must be positive")
    n = math.sqrt(compute_flops / (6.0 * tokens_per_param))
    return ComputeOptimal(compute_flops, n, tokens_per_param * n)


def loss(n_params: float, n_tokens: float, fit: str = "hoffmann2022") -> float:
    """Predicted final training loss (nats per token) of the parametric fit ``fit`` (see ``FITS``)."""
    f = FITS[fit]
    return f.e + f.a / n_params**f.alpha + f.b / n_tokens**f.beta


def optimal_from_fit(compute_flops: float, fit: str = "hoffmann2022") -> ComputeOptimal:
    """Minimise ``loss(N, D)`` subject to 6 N D = C (closed form, Hoffmann et al. eq. 4):
    N = G (C/6)^(beta/(alpha+beta)), D = (C/6) / N, with G = (alpha A / (beta B))^(1/(alpha+beta))."""
    f = FITS[fit]
    g = (f.alpha * f.a / (f.beta * f.b)) ** (1.0 / (f.alpha + f.beta))
    n = g * (compute_flops / 6.0) ** (f.beta / (f.alpha + f.beta))
    return ComputeOptimal(compute_flops, n, compute_flops / 6.0 / n)


def mfu(tokens_per_s: float, flops_per_token: float, num_gpus: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s per GPU over the GPU's dense peak (0..1)."""
    return tokens_per_s * flops_per_token / num_gpus / (peak_tflops * 1e12)


def tokens_per_s(flops_per_token: float, num_gpus: int, peak_tflops: float, mfu_fraction: float) -> float:
    """Training throughput (tokens/s, all GPUs) that ``mfu_fraction`` of ``peak_tflops`` per GPU sustains."""
    return num_gpus * peak_tflops * 1e12 * mfu_fraction / flops_per_token


def training_time_s(total_flops: float, num_gpus: int, peak_tflops: float, mfu_fraction: float) -> float:
    """Wall-clock seconds to do ``total_flops`` of training on ``num_gpus`` at ``mfu_fraction`` of peak."""
    if not 0 < mfu_fraction <= 1:
        raise ValueError(f"mfu_fraction={mfu_fraction}: a fraction in (0, 1], e.g. 0.35 for 35 %")
    return total_flops / (num_gpus * peak_tflops * 1e12 * mfu_fraction)


def gpu_hours(total_flops: float, peak_tflops: float, mfu_fraction: float) -> float:
    """GPU-hours for ``total_flops`` at ``mfu_fraction`` (independent of how many GPUs share the work)."""
    return training_time_s(total_flops, 1, peak_tflops, mfu_fraction) / 3600.0


def compute_for_gpu_hours(hours: float, peak_tflops: float, mfu_fraction: float) -> float:
    """FLOPs that ``hours`` GPU-hours deliver at ``mfu_fraction`` of ``peak_tflops``."""
    return hours * 3600.0 * peak_tflops * 1e12 * mfu_fraction


def budget_table(gpu_hour_budgets: list[float], peak_tflops: float, mfu_fraction: float,
                 tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM) -> Any:
    """For each GPU-hour budget: the compute it buys and the compute-optimal N and D (DataFrame)."""
    rows = []
    for h in gpu_hour_budgets:
        c = compute_for_gpu_hours(h, peak_tflops, mfu_fraction)
        opt = chinchilla_optimal(c, tokens_per_param)
        rows.append({"gpu_hours": h, "compute_flops": c, "n_params": opt.n_params, "n_tokens": opt.n_tokens,
                     "loss_hoffmann2022": loss(opt.n_params, opt.n_tokens)})
    return pd.DataFrame(rows)
