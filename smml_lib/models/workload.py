"""Where a Llama's work sits on the roofline: its GEMM shapes, and the FLOPs and bytes of each step.

``smml_lib.perf.gemm`` and ``smml_lib.perf.roofline`` know matrices and devices, not models. This module
applies them to a Llama config (``ModelDims``), before a single weight is loaded:

- ``llama_layer_shapes``: the GEMMs of one decoder layer (and the output head) for M tokens in the batch,
  and ``sweep_llama`` to time them;
- ``prefill_flops`` and ``llama_step_points``: FLOPs, bytes and arithmetic intensity of a prefill and of
  a decode step at batch B and context S;
- ``decode_critical_batch``: the batch at which a whole decode step turns compute-bound (if it ever does).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from smml_lib.common.device import bytes_per_element
from smml_lib.models.anatomy import ModelDims, forward_flops_per_token, kv_cache_bytes_per_token, param_counts
from smml_lib.perf.gemm import GemmShape, sweep


def llama_layer_shapes(config: Any, tokens: int, *, include_head: bool = True) -> list[GemmShape]:
    """The GEMMs of one Llama decoder layer (and the output head) for ``tokens`` rows in the batch.

    ``nn.Linear(in, out)`` computes x @ W^T: M = tokens, K = in_features, N = out_features.
    q/o use all heads, k/v only the key/value heads (grouped-query attention); the SwiGLU MLP has gate
    and up (d -> ff) and down (ff -> d). Attention's own score matmuls depend on the context and are left out.
    """
    m = ModelDims.of(config)
    d, ff = m.hidden_size, m.intermediate_size
    shapes = [GemmShape(tokens, m.q_dim, d, "q_proj"), GemmShape(tokens, m.kv_dim, d, "k_proj"),
              GemmShape(tokens, m.kv_dim, d, "v_proj"), GemmShape(tokens, d, m.q_dim, "o_proj"),
              GemmShape(tokens, ff, d, "gate_proj"), GemmShape(tokens, ff, d, "up_proj"),
              GemmShape(tokens, d, ff, "down_proj")]
    if include_head:
        shapes.append(GemmShape(tokens, m.vocab_size, d, "lm_head"))
    return shapes


def sweep_llama(config: Any, tokens: list[int], dtype: str = "bf16", device: Any = "cpu",
                **kwargs: Any) -> pd.DataFrame:
    """Time a Llama layer's GEMMs for each token count (M); adds a ``tokens`` column."""
    shapes = [s for t in tokens for s in llama_layer_shapes(config, t)]
    df = sweep(shapes, dtype, device, **kwargs)
    df.insert(1, "tokens", df["m"])
    return df


def prefill_flops(config: Any, prompt_tokens: int) -> float:
    """FLOPs of one prompt's prefill: every position t attends over the t positions before it.

    The sum of ``forward_flops_per_token(config, t)`` for t < T, in closed form.
    """
    m = ModelDims.of(config)
    t = prompt_tokens
    return t * forward_flops_per_token(config, 0) + 4.0 * m.num_layers * m.q_dim * t * (t - 1) / 2


def llama_step_points(config: Any, dtype: Any = "bf16", *, batch_sizes: list[int], context_len: int,
                      prompt_tokens: int | None = None) -> pd.DataFrame:
    """Where a Llama's prefill and decode steps sit on the roofline, from the config alone.

    decode (per step, B sequences at context S): FLOPs = B x forward FLOPs per token at context S;
    bytes = every matmul weight once + the KV cache of B x S tokens read + B new tokens' KV written.
    prefill (B prompts of T tokens): FLOPs = B x sum over positions; bytes = weights + B x T tokens' KV written.
    Activations are left out: they stay small next to weights at these batch sizes.
    """
    m, b = ModelDims.of(config), bytes_per_element(dtype)
    counts = param_counts(config).set_index("component")["params"]
    head = m.vocab_size * m.hidden_size  # the head reads V x d even when it shares the embedding matrix
    weights = (counts["attention"] + counts["mlp"] + head + counts["norms"]) * b
    kv = kv_cache_bytes_per_token(config, dtype)
    rows = []
    for bs in batch_sizes:
        fl = bs * forward_flops_per_token(config, context_len)
        by = weights + bs * (context_len + 1) * kv
        rows.append({"phase": "decode", "batch_size": bs, "tokens": bs, "flops": fl, "bytes": by})
        if prompt_tokens:
            fl = bs * prefill_flops(config, prompt_tokens)
            by = weights + bs * prompt_tokens * kv
            rows.append({"phase": "prefill", "batch_size": bs, "tokens": bs * prompt_tokens, "flops": fl, "bytes": by})
    df = pd.DataFrame(rows)
    df["intensity"] = df["flops"] / df["bytes"]
    df["label"] = [f"{p} B={bs}" for p, bs in zip(df["phase"], df["batch_size"])]
    return df


def decode_critical_batch(config: Any, dtype: Any, ridge: float, context_len: int) -> float:
    """Batch size at which a whole decode step reaches the ridge intensity (``inf`` if it never does).

    One step at batch B does B x F FLOPs (F = forward FLOPs per token at this context) and moves
    W + B x (S + 1) x kv bytes (weights once, each sequence's KV cache). Solving B·F = ridge x bytes:
    B = ridge·W / (F - ridge·(S + 1)·kv). A long context makes the KV term grow with B like the FLOPs do,
    so past some context no batch size makes decode compute-bound.
    """
    pts = llama_step_points(config, dtype, batch_sizes=[1], context_len=context_len)
    per_seq_bytes = (context_len + 1) * kv_cache_bytes_per_token(config, dtype)
    weights = pts["bytes"].iloc[0] - per_seq_bytes
    denom = pts["flops"].iloc[0] - ridge * per_seq_bytes
    return ridge * weights / denom if denom > 0 else float("inf")
