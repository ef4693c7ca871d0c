"""Time text generation the way users feel it: time to first token, time per output token, tokens/s.

Generation has two phases with very different costs:

- **prefill**: the whole prompt goes through the model in one forward pass (many tokens, big
  matmuls) and yields the first new token. Its duration is the *time to first token* (TTFT).
- **decode**: one forward pass per new token, each reading every weight again but doing little math
  per byte. The median step is the *time per output token* (TPOT); ``batch_size / TPOT`` is the decode
  throughput in tokens/s.

``timed_generate`` writes the greedy decoding loop out by hand (prefill, then one step at a time with
the KV cache, or re-running the whole sequence without it) so each phase is visible and timed on its
own, synchronizing the GPU after every step. ``measure_generation`` repeats it and returns a DataFrame.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from smml_lib.common.device import synchronize
from smml_lib.models import anatomy

DEFAULT_PROMPT = "A language model reads text as a sequence of tokens and"

_CACHE_KWARG: dict[type, str] = {}


def cache_kwarg(model: Any) -> str:
    """The name of ``model.forward``'s KV-cache argument: ``cache`` in recent transformers 5 releases,
    ``past_key_values`` in earlier ones (where newer releases still accept it, with a FutureWarning)."""
    kind = type(model)
    if kind not in _CACHE_KWARG:
        _CACHE_KWARG[kind] = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return _CACHE_KWARG[kind]


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned (``out.cache``, or ``out.past_key_values`` in earlier releases)."""
    return out["cache"] if "cache" in out else getattr(out, "past_key_values", None)


@dataclass
class GenerationTiming:
    """One timed generation. Times in seconds; ``decode_step_s`` has one entry per token after the first."""

    batch_size: int
    prompt_tokens: int
    new_tokens: int
    use_cache: bool
    ttft_s: float
    decode_step_s: list[float] = field(default_factory=list)
    total_s: float = 0.0
    text: str = ""
    token_ids: list[int] = field(default_factory=list)  # generated ids of the first sequence

    @property
    def tpot_s(self) -> float:
        """Median time per output token during decode (NaN when only one token was generated)."""
        return float(np.median(self.decode_step_s)) if self.decode_step_s else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second produced during decode, over the whole batch."""
        return self.batch_size / self.tpot_s if self.decode_step_s else float("nan")

    @property
    def e2e_tokens_per_s(self) -> float:
        """New tokens per second end to end (prefill included), over the whole batch."""
        return self.batch_size * self.new_tokens / self.total_s

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.batch_size * self.prompt_tokens / self.ttft_s

    def row(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
                "use_cache": self.use_cache, "ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "total_s": self.total_s,
                "prefill_tokens_per_s": self.prefill_tokens_per_s, "decode_tokens_per_s": self.decode_tokens_per_s,
                "e2e_tokens_per_s": self.e2e_tokens_per_s}


def model_device(model: Any) -> "Any":
    """The device of the model's input embeddings (where input ids must go)."""
    return model.get_input_embeddings().weight.device


def prompt_ids(tokenizer: Any, prompt: str = DEFAULT_PROMPT, *, batch_size: int = 1, prompt_tokens: int | None = None,
               device: Any = "cpu") -> "Any":
    """Token ids of shape (batch_size, T) for ``prompt``, repeated to ``batch_size`` rows.

    With ``prompt_tokens`` the prompt is repeated/cut to exactly that many tokens, so experiments can
    set the prefill length precisely. Identical rows need no padding.
    """
    ids = tokenizer(prompt, return_tensors="pt").input_ids[0]
    if prompt_tokens is not None:
        body = ids[1:] if len(ids) > 1 else ids  # keep BOS once at the front
        reps = -(-max(prompt_tokens - 1, 1) // len(body))
        ids = torch.cat([ids[:1], body.repeat(reps)])[:prompt_tokens]
    return ids.unsqueeze(0).repeat(batch_size, 1).to(device)


def timed_generate(model: Any, tokenizer: Any, prompt: str = DEFAULT_PROMPT, *, max_new_tokens: int = 32,
                   batch_size: int = 1, prompt_tokens: int | None = None, use_cache: bool = True) -> GenerationTiming:
    """Greedy generation written out step by step, timing prefill (TTFT) and every decode step.

    Args:
        model, tokenizer: as returned by ``smml_lib.models.loading.load_llama``.
        prompt: text prompt (repeated for every row of the batch).
        max_new_tokens: tokens to generate (exactly this many: no early stop at end-of-text).
        batch_size: sequences decoded together.
        prompt_tokens: force the prompt to exactly this many tokens (see ``prompt_ids``).
        use_cache: keep keys/values of past tokens (KV cache); False re-runs the whole sequence each step.
    """
    dev = model_device(model)
    ids = prompt_ids(tokenizer, prompt, batch_size=batch_size, prompt_tokens=prompt_tokens, device=dev)
    steps: list[float] = []
    generated = []
    with torch.inference_mode():
        synchronize(dev)
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=use_cache)
        nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        synchronize(dev)
        ttft = time.perf_counter() - t0
        generated.append(nxt)
        past = output_cache(out) if use_cache else None
        cache_kw = cache_kwarg(model)
        seq = ids
        for _ in range(max_new_tokens - 1):
            t = time.perf_counter()
            if use_cache:
                out = model(input_ids=nxt, use_cache=True, **{cache_kw: past})
                past = output_cache(out)
            else:
                seq = torch.cat([seq, nxt], dim=1)
                out = model(input_ids=seq, use_cache=False)
            nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            synchronize(dev)
            steps.append(time.perf_counter() - t)
            generated.append(nxt)
        total = time.perf_counter() - t0
    new = torch.cat(generated, dim=1)
    text = tokenizer.decode(new[0], skip_special_tokens=True)
    return GenerationTiming(batch_size, ids.shape[1], new.shape[1], use_cache, ttft, steps, total, text,
                            new[0].tolist())


def measure_generation(model: Any, tokenizer: Any, prompt: str = DEFAULT_PROMPT, *, repeats: int = 3,
                       warmup: int = 1, **kwargs: Any) -> "Any":
    """Run ``timed_generate`` ``warmup`` + ``repeats`` times; DataFrame with one row per timed repeat.

    Take the median of each column: the first run in a process pays one-off costs (memory allocation,
    kernel selection) that the warm-up absorbs.
    """
    for _ in range(warmup):
        timed_generate(model, tokenizer, prompt, **kwargs)
    rows = []
    for i in range(repeats):
        r = timed_generate(model, tokenizer, prompt, **kwargs)
        rows.append({"repeat": i, **r.row()})
    return pd.DataFrame(rows)


def sweep_generation(model: Any, tokenizer: Any, vary: str, values: list[Any], *, repeats: int = 2,
                     warmup: int = 1, **kwargs: Any) -> "Any":
    """Median generation metrics for each value of one knob (``prompt_tokens``, ``batch_size``, ``use_cache``...).

    Returns a DataFrame with one row per value: the medians of ``measure_generation``'s columns.
    """
    rows = []
    for value in values:
        df = measure_generation(model, tokenizer, repeats=repeats, warmup=warmup, **{**kwargs, vary: value})
        med = df.drop(columns=["repeat"]).median(numeric_only=True).to_dict()
        rows.append({vary: value, **{k: v for k, v in med.items() if k != vary}})
    return pd.DataFrame(rows)


def reference_tokens(model: Any, tokenizer: Any, prompt: str = DEFAULT_PROMPT, *, max_new_tokens: int = 32,
                     prompt_tokens: int | None = None) -> list[int]:
    """Greedy tokens from Hugging Face's ``generate`` (no early stop), to check a hand-written loop against."""
    ids = prompt_ids(tokenizer, prompt, prompt_tokens=prompt_tokens, device=model_device(model))
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def generated_tokens(model: Any, tokenizer: Any, prompt: str = DEFAULT_PROMPT, *, max_new_tokens: int = 32,
                     prompt_tokens: int | None = None, use_cache: bool = True) -> list[int]:
    """Greedy tokens from ``timed_generate``'s hand-written loop (same loop, token ids instead of timings)."""
    return timed_generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens, prompt_tokens=prompt_tokens,
                          use_cache=use_cache).token_ids


def tensor_bytes(tensors: Any) -> int:
    """Bytes held by an iterable of tensors, each storage counted once (tied weights are one tensor)."""
    seen, total = set(), 0
    for t in tensors:
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def cache_bytes(past_key_values: Any) -> int:
    """Bytes of a Hugging Face KV cache (keys and values of every layer)."""
    layers = getattr(past_key_values, "layers", None) or []
    return tensor_bytes([x for layer in layers for x in (getattr(layer, "keys", None), getattr(layer, "values", None))
                         if x is not None])


def measure_memory(model: Any, tokenizer: Any, *, batch_size: int = 1, context_len: int = 512) -> "Any":
    """Memory of inference, measured, next to the prediction from the config (``anatomy.inference_memory``).

    - **weights**: bytes of the model's parameters and buffers (each tensor storage once);
    - **kv_cache**: bytes of the cache after a prefill of ``batch_size`` x ``context_len`` tokens;
    - **activations_peak** (GPU only): the allocator's peak during that prefill above weights + cache, the
      temporary tensors a forward pass needs (on a CPU they come and go through malloc: not measured).

    On CUDA the weights and cache are also read from ``torch.cuda.memory_allocated`` (column ``allocator_bytes``),
    the allocator's own view. Returns a DataFrame: item, predicted_bytes, measured_bytes, allocator_bytes, ratio.
    """
    dev = model_device(model)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    weights = tensor_bytes(list(model.parameters()) + list(model.buffers()))
    ids = prompt_ids(tokenizer, batch_size=batch_size, prompt_tokens=context_len, device=dev)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = output_cache(out)
    del out  # keep only the cache (logits of the last position are tiny anyway)
    kv = cache_bytes(cache)
    alloc_w = alloc_kv = peak = None
    if cuda:
        torch.cuda.synchronize(dev)
        alloc_w = before  # everything allocated before the prefill: the weights (plus small buffers)
        alloc_kv = torch.cuda.memory_allocated(dev) - before
        peak = torch.cuda.max_memory_allocated(dev) - before - alloc_kv
    del cache
    pred = anatomy.inference_memory(model.config, dtype, batch_size, context_len).set_index("item")["bytes"]
    rows = [("weights", pred["weights"], weights, alloc_w), ("kv_cache", pred["kv_cache"], kv, alloc_kv),
            ("activations_peak", None, peak, peak)]
    df = pd.DataFrame(rows, columns=["item", "predicted_bytes", "measured_bytes", "allocator_bytes"])
    df.loc[len(df)] = ["weights + kv_cache", pred["total"], weights + kv,
                       (alloc_w + alloc_kv) if cuda else None]
    df[["predicted_bytes", "measured_bytes", "allocator_bytes"]] = df[
        ["predicted_bytes", "measured_bytes", "allocator_bytes"]].astype(float)  # None -> NaN (shown as "-")
    df["measured_over_predicted"] = df["measured_bytes"] / df["predicted_bytes"]
    return df
