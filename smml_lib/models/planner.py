"""Predict training and inference memory per GPU, before launching anything, and say whether it fits.

**Training** (``training_memory``) with AdamW and mixed precision keeps, per parameter:
4 bytes of fp32 master weights, 4 of fp32 gradients and 8 of Adam moments (m and v): 16 bytes,
plus activations that grow with tokens per micro-batch. The strategies differ in what they shard over
N GPUs (the ZeRO paper's stages; FSDP2 ``fully_shard`` is ZeRO-3):

=============  =========  =========  ==========  =====================================================
strategy       weights    gradients  optimizer   extra
=============  =========  =========  ==========  =====================================================
single / ddp   full       full       full        DDP keeps its gradient buckets between steps
zero1          full       full       1/N         (``ZeroRedundancyOptimizer``)
zero2          full       1/N        1/N
zero3 / fsdp   1/N        1/N        1/N         gathered parameters: the root group + ~2 layers
fsdp_noreshard 1/N        1/N        1/N         all layers stay gathered from forward to backward
=============  =========  =========  ==========  =====================================================

**Activations** are what autograd saves in forward for backward. ``activation_elements_per_token``
lists them for a Hugging Face Llama decoder layer, counted from the implementation (and checked
tensor by tensor in ``tests/test_planner.py``): RMSNorm inputs and outputs, the inputs of every linear
layer, q/k/v and the attention output (SDPA saves no seq x seq matrix), and the SwiGLU MLP's
gate/up/product (4 x intermediate). The loss saves the log-softmax of the logits (vocab per token).
Three compute modes store them differently: ``fp32``; ``autocast`` (bf16 matmuls, fp32 residual
stream, and one bf16 copy of every weight kept for backward); ``bf16`` (FSDP's bf16 parameters).
With activation checkpointing only each layer's input is kept; one layer is recomputed at a time.

Two totals: ``tensors`` = everything above held at once (what ``smml_lib.perf.memtrack`` measures on a
CPU), and ``peak`` = the GPU estimate, which adds the loss gradient buffers and accounts for
gradients being created while activations are freed (single, FSDP; with gradient accumulation the
earlier micro-batches' gradients are still there, so both count) or living in persistent buckets
(DDP, ZeRO-1). Compare ``peak`` with ``torch.cuda.max_memory_allocated``; the CUDA context and the
allocator's cache (``nvidia-smi`` shows them) come on top.

**Inference** (``inference_memory``): weights in the serving dtype plus the KV cache for
batch x context (``smml_lib.models.anatomy``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from smml_lib.common.device import bytes_per_element
from smml_lib.models.anatomy import (
    ModelDims,
    count_params_from_config,
    kv_cache_bytes_per_token,
    param_counts,
    preset_config,
)
from smml_lib.perf.hardware import lookup_spec

STRATEGY_ALIASES = {"fsdp": "zero3", "fsdp2": "zero3", "fsdp_noreshard": "fsdp_noreshard", "ddp_nosync": "ddp"}
STRATEGIES = ("single", "ddp", "zero1", "zero2", "zero3", "fsdp_noreshard")
GB = 1e9


def _config(cfg: Any) -> Any:
    if isinstance(cfg, str):
        return preset_config(cfg)
    return cfg


def activation_elements_per_token(cfg: Any, mode: str = "fp32") -> dict[str, dict[int, float]]:
    """Elements autograd saves per token, by bytes per element: ``{"layer": {4: n, 2: n}, "final": {...}}``.

    ``layer`` is one decoder layer; ``final`` the last norm, output head and loss (log-softmax) plus the
    logits themselves (alive until the loss is computed). ``mode``: ``fp32`` | ``autocast`` | ``bf16``.
    """
    m = ModelDims.of(_config(cfg))
    d, ff, qd, kvd, h, v = m.hidden_size, m.intermediate_size, m.q_dim, m.kv_dim, m.num_heads, m.vocab_size
    attn = 2 * qd + 2 * kvd  # q and the attention output; k and v (SDPA keeps grouped heads unrepeated)
    if mode == "fp32":  # norms: input, normalized, scaled (x2); q/k/v input and MLP input are the norm outputs
        return {"layer": {4: 6 * d + attn + 4 * ff + h}, "final": {4: 3 * d + 2 * v}}
    if mode == "autocast":  # fp32 residual stream; each linear saves its own bf16 copy of its input
        return {"layer": {4: 4 * d + h, 2: 5 * d + attn + 4 * ff}, "final": {4: 2 * d + v, 2: d + v}}
    if mode == "bf16":  # RMSNorm still upcasts to fp32 inside
        return {"layer": {4: 2 * d + h, 2: 4 * d + attn + 4 * ff}, "final": {4: d + v, 2: 2 * d + v}}
    raise ValueError(f"mode={mode!r}: use fp32, autocast or bf16")


def _bytes(elements: dict[int, float]) -> float:
    return sum(size * n for size, n in elements.items())


def activation_bytes(cfg: Any, tokens: int, mode: str = "fp32",
                     activation_checkpointing: bool = False) -> dict[str, float]:
    """Saved activation bytes for ``tokens`` tokens in one forward: ``saved`` and, with checkpointing,
    ``recompute`` (one layer's activations rebuilt during backward; transient)."""
    m = ModelDims.of(_config(cfg))
    per = activation_elements_per_token(cfg, mode)
    layer, final = _bytes(per["layer"]), _bytes(per["final"])
    if not activation_checkpointing:
        return {"saved": tokens * (m.num_layers * layer + final), "recompute": 0.0}
    stream = 2 if mode == "bf16" else 4  # the residual stream's dtype: each layer keeps only its input
    return {"saved": tokens * (m.num_layers * m.hidden_size * stream + final), "recompute": tokens * layer}


def normalize_strategy(strategy: str) -> str:
    s = STRATEGY_ALIASES.get(strategy.lower(), strategy.lower())
    if s not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: use one of {', '.join(STRATEGIES)} (or fsdp = zero3)")
    return s


def training_memory(cfg: Any, *, strategy: str = "ddp", num_gpus: int = 1, micro_batch: int = 1,
                    seq_len: int = 2048, precision: str = "bf16", activation_checkpointing: bool = False,
                    grad_accum: int = 1) -> Any:
    """Predicted memory per GPU for training ``cfg`` with AdamW. Returns a DataFrame (component, bytes, gb, note).

    Args:
        cfg: a config dict / ``PretrainedConfig`` / model, or a preset name such as ``"Llama-3.2-1B"``.
        strategy: single, ddp, zero1, zero2, zero3 (= fsdp) or fsdp_noreshard.
        num_gpus: data-parallel degree N.
        micro_batch, seq_len: sequences per forward on one GPU, and their length.
        precision: ``fp32`` or ``bf16`` (mixed: fp32 master weights, bf16 compute).
        activation_checkpointing: keep only each layer's input; recompute the rest in backward.
        grad_accum: micro-batches per optimizer step. Above 1 the gradients of the first micro-batches are
            still held while the next one's activations are alive, so both count at the peak.

    The frame's ``attrs`` carry ``tensors_bytes`` (all components held at once: what the CPU
    measurement counts) and ``peak_bytes`` (the GPU estimate, see the module docstring).
    """
    cfg = _config(cfg)
    s = normalize_strategy(strategy)
    n = 1 if s == "single" else num_gpus
    m = ModelDims.of(cfg)
    head = m.vocab_size * m.hidden_size  # the output head's matmul (the embedding matrix when tied)
    P = count_params_from_config(cfg)
    comp = param_counts(cfg).set_index("component")["params"]
    per_layer = (comp["attention"] + comp["mlp"]) / m.num_layers
    root = P - per_layer * m.num_layers  # embeddings, final norm, untied head
    matmul = comp["attention"] + comp["mlp"] + head  # weights that go through a matmul
    sharded = s in ("zero3", "fsdp_noreshard")
    mode = "fp32" if precision == "fp32" else ("bf16" if sharded else "autocast")
    pbytes = 4 if precision == "fp32" else 2  # compute dtype of gathered parameters
    tokens = micro_batch * seq_len
    act = activation_bytes(cfg, tokens, mode, activation_checkpointing)
    weights = 4 * P / (n if sharded else 1)
    grads = 4 * P / (n if s in ("zero2", "zero3", "fsdp_noreshard") else 1)
    optim = 8 * P / (n if s != "ddp" and s != "single" else 1)
    gathered = 0.0
    if s == "zero3":
        gathered = root * pbytes  # the root group is not resharded after forward
    elif s == "fsdp_noreshard":
        gathered = P * pbytes
    copies = 0.0
    if mode == "autocast":  # bf16 copies of the weights, saved for backward (only the head's with checkpointing)
        copies = 2 * (head if activation_checkpointing else matmul)
    rows = [("weights", weights, "fp32 master weights" + (f", 1/{n}" if sharded else "")),
            ("gradients", grads, "fp32" + (f", 1/{n}" if grads < 4 * P else "")),
            ("optimizer", optim, "AdamW m + v in fp32" + (f", 1/{n}" if optim < 8 * P else "")),
            ("activations", act["saved"],
             f"{tokens:,} tokens/GPU, {mode}" + (", checkpointed" if activation_checkpointing else "")),
            ("gathered_params", gathered, "FSDP: unsharded parameters held during forward/backward"),
            ("mp_weight_copies", copies, "autocast's bf16 weight copies saved for backward")]
    df = pd.DataFrame(rows, columns=["component", "bytes", "note"])
    df["gb"] = df["bytes"] / GB
    tensors = float(df["bytes"].sum())
    # GPU peak: + the loss's gradient buffers (fp32 logits grad, and its bf16 copy), + a recomputed layer
    loss_tmp = tokens * m.vocab_size * (4 + (0 if precision == "fp32" else 2)) + act["recompute"]
    if s in ("ddp", "zero1"):  # gradient buckets live from construction on
        peak = tensors + loss_tmp
    else:  # gradients appear while activations are freed: the larger of the two, plus the head's grad early on
        head_grad = 4 * head / (n if sharded else 1)
        layer_tmp = (2 * per_layer * pbytes + per_layer * pbytes) if sharded else 0  # prefetch + unsharded grad
        live = act["saved"] + loss_tmp + head_grad
        # accumulating: the earlier micro-batches' gradients stay while the next one's activations are alive
        held = live + grads if grad_accum > 1 else max(live, grads)
        peak = weights + optim + gathered + copies + layer_tmp + held
    df.attrs.update(tensors_bytes=tensors, peak_bytes=float(peak), strategy=s, num_gpus=n, params=P, mode=mode)
    return df


@dataclass
class Fit:
    """Does ``need_bytes`` fit a device of ``capacity_bytes``? ``headroom_bytes`` < 0 means short by that much."""

    need_bytes: float
    capacity_bytes: float
    device: str

    @property
    def fits(self) -> bool:
        return self.headroom_bytes >= 0

    @property
    def headroom_bytes(self) -> float:
        return self.capacity_bytes - self.need_bytes

    def message(self) -> str:
        verdict = "fits" if self.fits else "does NOT fit"
        return (f"{self.need_bytes / GB:.2f} GB {verdict} in {self.capacity_bytes / GB:.1f} GB ({self.device}): "
                f"{'headroom' if self.fits else 'short by'} {abs(self.headroom_bytes) / GB:.2f} GB")


def gpu_capacity_bytes(gpu: str = "L4", usable_fraction: float = 0.94) -> float:
    """Bytes a training or serving process can use on ``gpu`` (datasheet GB x ``usable_fraction``).

    About 6% goes to the CUDA context, the driver and ECC-reserved memory: an L4 sold as 24 GB shows
    22.5 GiB (24.15 GB) to torch, of which the context takes some hundreds of MB.
    """
    found = lookup_spec(gpu)
    if not found.found:
        raise ValueError(found.message)
    return found.spec.memory_gb * GB * usable_fraction


def fits(need_bytes: float, gpu: str = "L4", usable_fraction: float = 0.94) -> Fit:
    """Whether ``need_bytes`` fit one ``gpu``, and by how much (see ``gpu_capacity_bytes``)."""
    return Fit(float(need_bytes), gpu_capacity_bytes(gpu, usable_fraction), gpu)


def training_plan(cfg: Any, *, strategies: tuple[str, ...] = ("ddp", "zero1", "zero2", "zero3"),
                  gpu_counts: tuple[int, ...] = (1, 2, 4), gpu: str = "L4", **kwargs: Any) -> Any:
    """One row per (strategy, GPU count): memory per GPU by component, the peak estimate, and whether it fits."""
    rows = []
    for s in strategies:
        for n in gpu_counts:
            df = training_memory(cfg, strategy=s, num_gpus=n, **kwargs)
            f = fits(df.attrs["peak_bytes"], gpu)
            rows.append({"strategy": normalize_strategy(s), "num_gpus": n,
                         **{f"{c}_gb": b / GB for c, b in zip(df["component"], df["bytes"])},
                         "peak_gb": df.attrs["peak_bytes"] / GB, "capacity_gb": f.capacity_bytes / GB,
                         "fits": f.fits, "headroom_gb": f.headroom_bytes / GB})
    return pd.DataFrame(rows)


def inference_memory(cfg: Any, *, dtype: str = "bf16", batch_size: int = 1, context_len: int = 2048,
                     num_gpus: int = 1, gpu: str | None = "L4") -> Any:
    """Weights + KV cache for ``batch_size`` x ``context_len``, total and per GPU when split over ``num_gpus``
    (layers spread evenly, as ``device_map="auto"`` does). Adds a ``fits`` verdict when ``gpu`` is given."""
    cfg = _config(cfg)
    w = count_params_from_config(cfg) * bytes_per_element(dtype)
    kv = kv_cache_bytes_per_token(cfg, dtype) * batch_size * context_len
    df = pd.DataFrame({"item": ["weights", "kv_cache", "total"], "bytes": [w, kv, w + kv]})
    df["per_gpu_bytes"] = df["bytes"] / num_gpus
    df["gb"], df["per_gpu_gb"] = df["bytes"] / GB, df["per_gpu_bytes"] / GB
    if gpu:
        f = fits((w + kv) / num_gpus, gpu)
        df.attrs.update(fits=f.fits, headroom_bytes=f.headroom_bytes, message=f.message())
    return df
