"""What limits a decoding server: memory bandwidth, compute, and the memory the KV cache needs.

One decode step of a batch of ``B`` sequences, each with ``S`` tokens of context, must

- **read** every weight once (``W`` bytes, shared by the whole batch) and every sequence's KV cache
  (``B x S x kv`` bytes, *not* shared): ``bytes = W + B*S*kv``;
- **compute** one token per sequence: ``flops = B x F(S)``, with ``F`` from ``anatomy.forward_flops_per_token``.

The step takes at least ``max(bytes / bandwidth, flops / peak)``, so at most ``B / step`` tokens/s come out.
At small ``B`` the bytes win (decode is memory-bound) and adding sequences is almost free; the step turns
compute-bound where ``B x F = ridge x (W + B*S*kv)`` (ridge = peak / bandwidth, in FLOP per byte). With
``S = 0`` that is ``B* = ridge x W / F``; in bf16 a weight is 2 bytes and costs 2 FLOPs per token, so ``B*`` is
the ridge point itself (~400 on an L4). With context, the KV reads grow with ``B`` too (attention does only
about (heads / kv heads) FLOPs per KV byte), and past a few hundred tokens of context decode never becomes
compute-bound. Before either, the KV cache may simply not fit: ``(usable memory - W) / (S x kv)`` sequences.

These are bounds from datasheet numbers, not predictions of what a server achieves: real servers lose to
kernel launches, attention inefficiency and scheduling, and the gap is what a lab measures.
"""

from __future__ import annotations

import gc
from typing import Any, Sequence

import pandas as pd
import torch

from smml_lib.common import plots
from smml_lib.models.anatomy import forward_flops_per_token, kv_cache_bytes_per_token, weight_bytes
from smml_lib.models.inference import model_device, sweep_generation
from smml_lib.models.loading import load_llama
from smml_lib.models.workload import decode_critical_batch
from smml_lib.perf.roofline import ridge_point

USABLE_FRACTION = 0.9  # share of GPU memory a server may use (vLLM's default gpu_memory_utilization)


def step_bytes(cfg: Any, dtype: str, batch: int, context_len: int) -> float:
    """Bytes one decode step reads: all weights once, plus every sequence's KV cache."""
    return weight_bytes(cfg, dtype) + batch * context_len * kv_cache_bytes_per_token(cfg, dtype)


def compute_bound_batch(cfg: Any, spec: Any, dtype: str = "bf16", context_len: int = 0) -> float:
    """Smallest batch at which a decode step is compute-bound on ``spec`` (``inf`` if it never is).

    The same solve as ``workload.decode_critical_batch`` (Module 01), with the datasheet ridge point of ``spec``.
    """
    return decode_critical_batch(cfg, dtype, ridge_point(spec.peak_tflops(dtype), spec.bandwidth_gbs), context_len)


def kv_limit_sequences(cfg: Any, spec: Any, dtype: str = "bf16", context_len: int = 2048,
                       usable_fraction: float = USABLE_FRACTION) -> int:
    """How many sequences of ``context_len`` tokens fit in one device's memory after the weights."""
    free = usable_fraction * spec.memory_gb * 1e9 - weight_bytes(cfg, dtype)
    return max(0, int(free // (max(context_len, 1) * kv_cache_bytes_per_token(cfg, dtype))))


def decode_roofline(cfg: Any, spec: Any, *, dtype: str = "bf16", context_len: int = 1024,
                    batches: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                    usable_fraction: float = USABLE_FRACTION) -> "Any":
    """Upper bound on decode tokens/s per batch size on one device; DataFrame, one row per batch.

    Columns: batch, step_bytes, step_flops, memory_time_s, compute_time_s, step_time_s, max_tokens_per_s,
    bound ("memory" or "compute"), kv_fits (whether that many sequences fit next to the weights).
    """
    limit = kv_limit_sequences(cfg, spec, dtype, context_len, usable_fraction)
    peak = spec.peak_tflops(dtype) * 1e12
    rows = []
    for b in batches:
        nbytes = step_bytes(cfg, dtype, b, context_len)
        flops = b * forward_flops_per_token(cfg, context_len)
        t_mem, t_cmp = nbytes / (spec.bandwidth_gbs * 1e9), flops / peak
        step = max(t_mem, t_cmp)
        rows.append({"batch": b, "step_bytes": nbytes, "step_flops": flops, "memory_time_s": t_mem,
                     "compute_time_s": t_cmp, "step_time_s": step, "max_tokens_per_s": b / step,
                     "bound": "memory" if t_mem >= t_cmp else "compute", "kv_fits": b <= limit})
    return pd.DataFrame(rows)


def plot_decode_roofline(tables: dict[str, Any], *, measured: Any = None, name: str | None = "decode_roofline",
                         title: str | None = None) -> Any:
    """Max decode tokens/s against batch size, one line per context length; optional measured points.

    ``tables``: label -> ``decode_roofline`` frame. ``measured``: frame with ``batch`` and ``tokens_per_s``.
    Batches whose KV cache does not fit are drawn dotted.
    """
    fig, ax = plots.figure(title=title or "Decode throughput bound")
    for label, df in tables.items():
        line, = ax.plot(df["batch"], df["max_tokens_per_s"], marker="o", ms=3, label=label)
        over = df[~df["kv_fits"]]
        if len(over):
            ax.plot(over["batch"], over["max_tokens_per_s"], ls=":", color=line.get_color(), marker="x", ms=4)
    if measured is not None and len(measured):
        ax.plot(measured["batch"], measured["tokens_per_s"], "k*", ms=10, label="measured")
    ax.set_xlabel("sequences decoded together (batch)")
    ax.set_ylabel("max output tokens/s")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.legend()
    return plots.finish(fig, name)


def decode_scaling(model: Any, tokenizer: Any, batches: Sequence[int], *, new_tokens: int = 16,
                   prompt_tokens: int = 16) -> "Any":
    """Measured decode step time and tokens/s per batch size on this device (the hand-written loop).

    The upper bound on what batching can buy a server: ``gain = tokens/s at batch B / tokens/s at batch 1``.
    On the CPU it runs on one torch thread, like the server subprocesses (restored afterwards).
    """
    threads = torch.get_num_threads()
    if model_device(model).type == "cpu":
        torch.set_num_threads(1)
    try:
        df = sweep_generation(model, tokenizer, "batch_size", list(batches), max_new_tokens=new_tokens,
                              prompt_tokens=prompt_tokens, repeats=2)
    finally:
        torch.set_num_threads(threads)
    df = df[["batch_size", "tpot_s", "decode_tokens_per_s"]].copy()
    df["gain_vs_batch_1"] = df["decode_tokens_per_s"] / df["decode_tokens_per_s"].iloc[0]
    return df


def measure_batching_gain(model_id: str, batches: Sequence[int], *, device: Any = "auto", new_tokens: int = 16,
                          prompt_tokens: int = 16) -> "Any":
    """Load ``model_id``, run ``decode_scaling``, and free the model (and its GPU memory) again."""
    model, tokenizer = load_llama(model_id, device=device)
    try:
        return decode_scaling(model, tokenizer, batches, new_tokens=new_tokens, prompt_tokens=prompt_tokens)
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # leave the GPU to the servers (and to vLLM in the lab's last step)
