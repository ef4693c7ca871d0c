"""Making Llama decode fast, one rung at a time, each rung predicted and then measured.

The **ladder** (Lab 01-3) starts from the naive way to run a model and changes one thing per rung:

=====================  ===========================================================================
rung                   what changes and why it should help
=====================  ===========================================================================
naive                  fp32 weights, eager attention, no KV cache: every step re-runs the whole text
bf16                   half the bytes per weight: a memory-bound step should take about half the time
sdpa                   fused scaled-dot-product attention instead of matmul + softmax + matmul
kv_cache               keep past keys/values: a step processes 1 token instead of the whole sequence
static_compile         a preallocated (static) KV cache + ``torch.compile``: one fused graph per step,
                       replayed as a CUDA graph on GPUs, so Python and kernel-launch overhead disappear
=====================  ===========================================================================

Each rung's **prediction** is the roofline lower bound of one decode step,
``max(bytes / measured copy bandwidth, FLOPs / measured matmul FLOP/s)`` for that rung's work. The
**measurement** is the median time per output token (TPOT) at batch 1. The gap between them is
overhead: what the later rungs remove. The ladder ends at the *memory-bandwidth bound*, weight bytes
per token / measured copy bandwidth: no batch-1 decode can be faster on this device.

``StaticDecoder`` is the static-cache + compiled decode loop, written out so every step is timed.

Longer than ~300 lines because the rungs, their predictions and the loop that measures them are read
together in Lab 01-3: each rung's prediction sits next to the code it predicts.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import StaticCache

from smml_lib.common.device import device_name, dtype_name, resolve_dtype, synchronize
from smml_lib.models import anatomy
from smml_lib.models.inference import (
    DEFAULT_PROMPT,
    GenerationTiming,
    cache_kwarg,
    model_device,
    prompt_ids,
    timed_generate,
)
from smml_lib.models.loading import load_llama
from smml_lib.models.workload import prefill_flops


@dataclass(frozen=True)
class Rung:
    """One configuration on the ladder."""

    name: str
    dtype: str  # "fp32" | "bf16" | "fp16"
    attn: str  # "eager" | "sdpa"
    use_cache: bool
    static_compile: bool = False
    change: str = ""  # what this rung changes, in words


def default_rungs(fast_dtype: str = "bf16") -> list[Rung]:
    """The five rungs of Lab 01-3 (``fast_dtype`` is fp16 on GPUs without bf16, e.g. a T4)."""
    return [
        Rung("naive", "fp32", "eager", False, change="fp32, eager attention, no KV cache"),
        Rung(fast_dtype, fast_dtype, "eager", False, change=f"weights in {fast_dtype}: half the bytes"),
        Rung("sdpa", fast_dtype, "sdpa", False, change="fused attention kernel (SDPA)"),
        Rung("kv_cache", fast_dtype, "sdpa", True, change="KV cache: one token per step"),
        Rung("static_compile", fast_dtype, "sdpa", True, True, change="static KV cache + torch.compile"),
    ]


def step_work(config: Any, rung: Rung, *, batch_size: int, context_len: int) -> dict[str, float]:
    """FLOPs and minimum bytes of one decode step at ``context_len`` tokens already in the sequence.

    With the KV cache a step pushes ``batch_size`` new tokens through the model and reads the weights
    and the cache; without it, it re-runs all ``context_len + 1`` positions (a prefill of that length).
    """
    weights = anatomy.weight_bytes(config, rung.dtype)
    if rung.use_cache:
        flops = batch_size * anatomy.forward_flops_per_token(config, context_len)
        nbytes = weights + batch_size * (context_len + 1) * anatomy.kv_cache_bytes_per_token(config, rung.dtype)
    else:
        flops = batch_size * prefill_flops(config, context_len + 1)
        nbytes = weights  # at least the weights once; the work is the recomputation (FLOPs)
    return {"flops": flops, "bytes": nbytes}


def predict_tpot_s(config: Any, rung: Rung, *, batch_size: int, context_len: int, copy_gbps: float,
                   matmul_tflops: dict[str, float]) -> float:
    """Roofline lower bound of one decode step: max(bytes / bandwidth, FLOPs / matmul throughput)."""
    w = step_work(config, rung, batch_size=batch_size, context_len=context_len)
    peak = matmul_tflops.get(rung.dtype) or max(matmul_tflops.values())
    return max(w["bytes"] / (copy_gbps * 1e9), w["flops"] / (peak * 1e12))


def bandwidth_bound_tpot_s(config: Any, dtype: str, copy_gbps: float) -> float:
    """The memory-bandwidth bound of batch-1 decode: weight bytes per token / measured copy bandwidth."""
    return anatomy.weight_bytes(config, dtype) / (copy_gbps * 1e9)


class StaticDecoder:
    """Greedy decode with a preallocated (static) KV cache, optionally through ``torch.compile``.

    A static cache has fixed shapes, so the compiled step never needs recompiling as the text grows.
    On CUDA, ``mode="reduce-overhead"`` also captures the step as a CUDA graph: one launch replays all of
    its kernels. The prefill runs eagerly (its shape changes with every prompt), as Hugging Face does.

    Args:
        model: a loaded Llama. max_cache_len: prompt + new tokens must fit.
        compile: ``"step"`` compiles the whole decode step (``fullgraph=True, dynamic=False``); ``"mlp"``
            compiles only each layer's MLP, used during decode (a much smaller graph: what smoke mode
            compiles, because compiling the whole step costs 20-40 s on a 2-core CPU); ``None``: no compile.
        mode: ``"auto"`` = ``"reduce-overhead"`` (CUDA graphs) on CUDA, inductor's default on CPU.
        backend: ``torch.compile`` backend (``"inductor"`` generates fused kernels).
    """

    def __init__(self, model: Any, *, max_cache_len: int, compile: str | None = "step", mode: str | None = "auto",
                 backend: str = "inductor"):
        if compile not in ("step", "mlp", None):
            raise ValueError(f"compile={compile!r}: use 'step', 'mlp' or None")
        self.model, self.max_cache_len = model, max_cache_len
        self.device = model_device(model)
        if mode == "auto":
            mode = "reduce-overhead" if self.device.type == "cuda" and compile == "step" else None
        self.compile_scope, self.mode = compile, mode
        self._caches: dict[int, Any] = {}
        opts = dict(fullgraph=True, dynamic=False, mode=mode, backend=backend)
        # one graph per batch size and model (dynamic=False), all on the same code object: allow more than the
        # default 8 before Dynamo gives up and runs eagerly (a batch sweep after the ladder, cells run twice)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        self.step = torch.compile(self._step, **opts) if compile == "step" else self._step
        self._mlps = ([(layer.mlp, torch.compile(layer.mlp.forward, **opts)) for layer in model.model.layers]
                      if compile == "mlp" else [])
        self.first_call_s: float | None = None  # the compile cost, once measured
        self._cache_kw = cache_kwarg(model)

    def _step(self, ids: Any, cache: Any) -> Any:
        out = self.model(input_ids=ids, use_cache=True, **{self._cache_kw: cache})
        return out.logits[:, -1, :].argmax(dim=-1, keepdim=True)

    @contextmanager
    def _compiled_mlps(self) -> Iterator[None]:
        """With ``compile="mlp"``: route each layer's MLP through its compiled forward, restore it afterwards."""
        for mlp, fn in self._mlps:
            mlp.forward = fn
        try:
            yield
        finally:
            for mlp, _ in self._mlps:
                mlp.__dict__.pop("forward", None)

    @contextmanager
    def _eager_mlps(self) -> Iterator[None]:
        """The prefill runs eagerly even with compiled MLPs (its shape changes with every prompt)."""
        saved = [(mlp, mlp.__dict__.pop("forward", None)) for mlp, _ in self._mlps]
        try:
            yield
        finally:
            for mlp, fn in saved:
                if fn is not None:
                    mlp.forward = fn

    def _cache(self, batch_size: int) -> Any:
        cache = self._caches.get(batch_size)
        if cache is None:
            cache = self._caches[batch_size] = StaticCache(config=self.model.config, max_cache_len=self.max_cache_len)
        else:
            cache.reset()
        return cache

    def generate(self, tokenizer: Any, prompt: str = DEFAULT_PROMPT, *, max_new_tokens: int = 32, batch_size: int = 1,
                 prompt_tokens: int | None = None) -> GenerationTiming:
        """Like ``inference.timed_generate`` (same timings, same greedy tokens) with the static/compiled step."""
        ids = prompt_ids(tokenizer, prompt, batch_size=batch_size, prompt_tokens=prompt_tokens, device=self.device)
        if ids.shape[1] + max_new_tokens > self.max_cache_len:
            raise ValueError(f"prompt ({ids.shape[1]}) + new tokens ({max_new_tokens}) exceed max_cache_len "
                             f"{self.max_cache_len}: make a StaticDecoder with a larger max_cache_len")
        cache = self._cache(batch_size)
        cudagraphs = self.mode == "reduce-overhead"
        steps, generated = [], []
        with torch.no_grad(), self._compiled_mlps():  # no_grad, not inference_mode: CUDA-graph trees need it
            synchronize(self.device)
            t0 = time.perf_counter()
            with self._eager_mlps():  # logits of the last position only: B x T x vocab would not fit at large B
                out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
            nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            synchronize(self.device)
            ttft = time.perf_counter() - t0
            generated.append(nxt)
            for _ in range(max_new_tokens - 1):
                t = time.perf_counter()
                if cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()
                nxt = self.step(nxt, cache)
                if cudagraphs:
                    nxt = nxt.clone()  # the graph's output buffer is overwritten by the next replay
                synchronize(self.device)
                dt = time.perf_counter() - t
                if self.first_call_s is None:
                    self.first_call_s = dt
                steps.append(dt)
                generated.append(nxt)
            total = time.perf_counter() - t0
        new = torch.cat(generated, dim=1)
        return GenerationTiming(batch_size, ids.shape[1], new.shape[1], True, ttft, steps, total,
                                tokenizer.decode(new[0], skip_special_tokens=True), new[0].tolist())


def apply_rung(model: Any, rung: Rung) -> Any:
    """Put the model in the rung's dtype and attention implementation (in place)."""
    # RoPE frequencies stay fp32, as a checkpoint loaded in bf16 keeps them: model.to() would round them too,
    # and the bf16 rungs would then differ from the naive one by more than the weights' rounding.
    rope = {n: b.detach().clone() for n, b in model.named_buffers()
            if n.endswith("inv_freq") and b.dtype == torch.float32}
    model.to(resolve_dtype(rung.dtype))
    for name, value in rope.items():
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._buffers[attr] = value
    model.set_attn_implementation(rung.attn)
    return model


def measure_rung(model: Any, tokenizer: Any, rung: Rung, *, prompt_tokens: int, new_tokens: int, batch_size: int = 1,
                 repeats: int = 2, decoder: StaticDecoder | None = None, compile_scope: str = "step",
                 compile_backend: str = "inductor") -> dict[str, Any]:
    """Time one rung (after one warm-up generation): median TTFT and TPOT, decode tokens/s, compile cost."""
    apply_rung(model, rung)
    first_call_s = None
    if rung.static_compile:
        decoder = decoder or StaticDecoder(model, max_cache_len=prompt_tokens + new_tokens, compile=compile_scope,
                                           backend=compile_backend)
        run = lambda: decoder.generate(tokenizer, max_new_tokens=new_tokens, batch_size=batch_size,
                                       prompt_tokens=prompt_tokens)
    else:
        run = lambda: timed_generate(model, tokenizer, max_new_tokens=new_tokens, batch_size=batch_size,
                                     prompt_tokens=prompt_tokens, use_cache=rung.use_cache)
    t0 = time.perf_counter()
    warm = run()
    if rung.static_compile:
        first_call_s = decoder.first_call_s
    warm_s = time.perf_counter() - t0
    runs = [run() for _ in range(repeats)]
    tpot = float(np.median([r.tpot_s for r in runs]))
    return {"rung": rung.name, "change": rung.change, "dtype": rung.dtype, "attn": rung.attn,
            "kv_cache": rung.use_cache,
            "static_compile": rung.static_compile, "batch_size": batch_size, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "ttft_s": float(np.median([r.ttft_s for r in runs])), "tpot_s": tpot,
            "decode_tokens_per_s": batch_size / tpot, "first_call_s": first_call_s, "warmup_run_s": warm_s,
            "token_ids": runs[-1].token_ids or warm.token_ids}


def run_ladder(model_id: str, rungs: list[Rung], *, prompt_tokens: int, new_tokens: int, copy_gbps: float,
               matmul_tflops: dict[str, float], repeats: int = 2, device: Any = "auto", compile_scope: str = "step",
               compile_backend: str = "inductor", progress: bool = True) -> "Any":
    """Measure every rung on one model (loaded once in fp32, converted as the ladder climbs).

    Returns a DataFrame with, per rung: predicted and measured TPOT, decode tokens/s, speedup vs the first
    rung and vs the previous one, % of the memory-bandwidth bound, and whether the greedy tokens match the
    first rung's. ``copy_gbps`` and ``matmul_tflops`` (per dtype) are this device's measured ceilings;
    ``compile_scope`` is passed to ``StaticDecoder`` (``"mlp"`` in smoke mode).
    """
    model, tok = load_llama(model_id, dtype="fp32", device=device)
    ctx = prompt_tokens + new_tokens // 2  # the typical context of a step
    rows = []
    for rung in tqdm(rungs, desc="ladder", disable=not progress, leave=False):
        row = measure_rung(model, tok, rung, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats,
                           compile_scope=compile_scope, compile_backend=compile_backend)
        row["predicted_tpot_s"] = predict_tpot_s(model.config, rung, batch_size=1, context_len=ctx,
                                                 copy_gbps=copy_gbps, matmul_tflops=matmul_tflops)
        row["bandwidth_bound_tpot_s"] = bandwidth_bound_tpot_s(model.config, rung.dtype, copy_gbps)
        rows.append(row)
    df = pd.DataFrame(rows)
    base = df["token_ids"].iloc[0]
    df["same_tokens_as_naive"] = [list(t) == list(base) for t in df["token_ids"]]
    df = df.drop(columns=["token_ids"])
    df["speedup_vs_naive"] = df["tpot_s"].iloc[0] / df["tpot_s"]
    df["speedup_vs_previous"] = df["tpot_s"].shift(1) / df["tpot_s"]
    df["measured_over_predicted"] = df["tpot_s"] / df["predicted_tpot_s"]
    df["pct_of_bandwidth_bound"] = 100 * df["bandwidth_bound_tpot_s"] / df["tpot_s"]
    df["model"] = model.smml_source["model_id"]
    df["device_name"] = device_name(model_device(model))
    del model
    _release_compiled()
    return df


def _release_compiled() -> None:
    """Free what compiled rungs keep alive (dynamo's cache, CUDA-graph memory pools) for the next lab step."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def batch_sweep(model: Any, tokenizer: Any, batch_sizes: list[int], *, prompt_tokens: int, new_tokens: int,
                static_compile: bool = False, repeats: int = 1, copy_gbps: float | None = None,
                matmul_tflops: dict[str, float] | None = None, progress: bool = True) -> "Any":
    """Decode throughput and latency per batch size on the model as it is (dtype, attention: unchanged).

    With ``static_compile`` every batch size gets its own static cache and compiled graph (one compile each).
    Returns batch_size, ttft_s, tpot_s, decode_tokens_per_s, the per-sequence tokens/s, TPOT relative to batch 1
    and the achieved decode TFLOP/s; with the measured ceilings (``copy_gbps``, ``matmul_tflops`` per dtype) also
    the roofline prediction ``predicted_tpot_s`` for each batch size (at the typical context of a step).
    """
    decoder = StaticDecoder(model, max_cache_len=prompt_tokens + new_tokens) if static_compile else None  # step scope
    dtype = dtype_name(next(model.parameters()).dtype)
    rung = Rung("batch", dtype, model.config._attn_implementation or "sdpa", True, static_compile)
    rows = []
    for bs in tqdm(batch_sizes, desc="batch sizes", disable=not progress, leave=False):
        row = measure_rung(model, tokenizer, rung, prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch_size=bs,
                           repeats=repeats, decoder=decoder)
        if decoder is not None:
            decoder.first_call_s = None
        rows.append({k: row[k] for k in ("batch_size", "ttft_s", "tpot_s", "decode_tokens_per_s", "first_call_s")})
    df = pd.DataFrame(rows)
    ctx = prompt_tokens + new_tokens // 2
    df["per_sequence_tokens_per_s"] = 1.0 / df["tpot_s"]
    df["tpot_vs_batch1"] = df["tpot_s"] / df["tpot_s"].iloc[0]
    df["decode_tflops"] = df["batch_size"] * anatomy.forward_flops_per_token(model.config, ctx) / df["tpot_s"] / 1e12
    if copy_gbps and matmul_tflops:
        cached = Rung("kv_cache", rung.dtype, rung.attn, True)
        df["predicted_tpot_s"] = [predict_tpot_s(model.config, cached, batch_size=int(b), context_len=ctx,
                                                 copy_gbps=copy_gbps, matmul_tflops=matmul_tflops)
                                  for b in df["batch_size"]]
    return df


def knee_batch_size(sweep: Any, *, tolerance: float = 1.5) -> int | None:
    """First batch size whose TPOT exceeds ``tolerance`` x the batch-1 TPOT: where batching stops being free."""
    over = sweep[sweep["tpot_vs_batch1"] > tolerance]
    return int(over["batch_size"].iloc[0]) if len(over) else None
