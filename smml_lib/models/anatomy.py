"""Predict a Llama's size, memory and work from its config alone, before loading a single weight.

Every number a lab measures is first *predicted* here, from ``config.json``:

- parameters per component (embeddings, attention, MLP, norms, output head);
- bytes of weights per dtype, and of KV cache per token;
- forward FLOPs per token (about 2 x parameters, plus attention over the context).

The same functions serve the tiny model in smoke mode and Llama-3.2-1B / Llama-2-13B for real:
``preset_config("Llama-3.2-1B")`` gives the published shape without any download.
"""

from __future__ import annotations

from typing import Any, Mapping

DTYPE_BYTES = {"fp32": 4, "float32": 4, "tf32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2,
               "fp8": 1, "int8": 1, "int4": 0.5}

# Published shapes (config.json of each checkpoint) so labs can predict without downloading.
LLAMA_PRESETS: dict[str, dict[str, Any]] = {
    "Llama-3.2-1B": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5),
    "Llama-3.1-8B": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5),
    "Llama-2-13b": dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40, head_dim=128, tie_word_embeddings=False,
                        max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5),
}


def preset_config(name: str) -> dict[str, Any]:
    """The config dict of a published Llama (``Llama-3.2-1B``, ``Llama-3.1-8B``, ``Llama-2-13b``)."""
    for key, cfg in LLAMA_PRESETS.items():
        if key.lower() == name.lower() or key.lower() in name.lower():
            return {"model_type": "llama", "_name": key, **cfg}
    raise KeyError(f"no preset {name!r}; known: {', '.join(LLAMA_PRESETS)}")


def _cfg(config: Any) -> Mapping[str, Any]:
    """Accept a ``PretrainedConfig``, a dict, or a model (uses ``model.config``)."""
    if hasattr(config, "config") and not isinstance(config, Mapping):
        config = config.config
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return config


def _dims(config: Any) -> dict[str, int]:
    c = _cfg(config)
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    return {"V": c["vocab_size"], "d": c["hidden_size"], "ff": c["intermediate_size"], "L": c["num_hidden_layers"],
            "h": heads, "kv": c.get("num_key_value_heads") or heads, "hd": head_dim}


def param_counts(config: Any) -> "Any":
    """Parameters per component, predicted from the config. Returns a DataFrame (component, params, share).

    Per decoder layer: attention has Wq (d x h*hd), Wk and Wv (d x kv*hd each: grouped-query attention
    shares each key/value head between h/kv query heads) and Wo (h*hd x d); the SwiGLU MLP has three
    d x ff matrices (gate, up, down); two RMSNorm weight vectors of size d. Tied embeddings mean the
    output head reuses the embedding matrix: zero extra parameters (but the same matmul work).
    """
    import pandas as pd

    c, k = _cfg(config), _dims(config)
    bias = 1 if c.get("attention_bias") else 0
    attn = k["d"] * k["h"] * k["hd"] + 2 * k["d"] * k["kv"] * k["hd"] + k["h"] * k["hd"] * k["d"]
    attn += bias * (k["h"] * k["hd"] + 2 * k["kv"] * k["hd"] + k["d"])
    mlp = 3 * k["d"] * k["ff"] + (3 * k["ff"] if c.get("mlp_bias") else 0)
    rows = {
        "embeddings": k["V"] * k["d"],
        "attention": k["L"] * attn,
        "mlp": k["L"] * mlp,
        "norms": (2 * k["L"] + 1) * k["d"],
        "lm_head": 0 if c.get("tie_word_embeddings", False) else k["V"] * k["d"],
    }
    df = pd.DataFrame({"component": list(rows), "params": list(rows.values())})
    df["share"] = df["params"] / df["params"].sum()
    return df


def count_params_from_config(config: Any) -> int:
    """Total parameters predicted from the config."""
    return int(param_counts(config)["params"].sum())


def component_of(name: str) -> str:
    """Which component a parameter name belongs to (``model.layers.3.mlp.up_proj.weight`` -> ``mlp``)."""
    for key, comp in (("embed_tokens", "embeddings"), ("lm_head", "lm_head"), ("self_attn", "attention"),
                      ("mlp", "mlp"), ("norm", "norms")):
        if key in name:
            return comp
    return "other"


def measured_param_counts(model: Any) -> "Any":
    """Parameters per component counted from a loaded model's tensors (tied weights counted once)."""
    import pandas as pd

    counts: dict[str, int] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        comp = component_of(name)
        counts[comp] = counts.get(comp, 0) + p.numel()
    order = ["embeddings", "attention", "mlp", "norms", "lm_head", "other"]
    df = pd.DataFrame({"component": order, "params": [counts.get(c, 0) for c in order]})
    df = df[(df["params"] > 0) | df["component"].isin(order[:5])].reset_index(drop=True)
    df["share"] = df["params"] / df["params"].sum()
    return df


def bytes_per_element(dtype: Any) -> float:
    """Bytes per element for a dtype name or ``torch.dtype``."""
    name = str(dtype).replace("torch.", "")
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


def weight_bytes(config: Any, dtype: Any = "bf16") -> float:
    """Bytes of all weights in ``dtype`` (parameters x bytes per element)."""
    return count_params_from_config(config) * bytes_per_element(dtype)


def kv_cache_bytes_per_token(config: Any, dtype: Any = "bf16") -> float:
    """KV-cache bytes one token adds: keys and values, for every layer and key/value head."""
    k = _dims(config)
    return 2 * k["L"] * k["kv"] * k["hd"] * bytes_per_element(dtype)


def inference_memory(config: Any, dtype: Any = "bf16", batch_size: int = 1, context_len: int = 2048) -> "Any":
    """Predicted inference memory: weights plus KV cache for ``batch_size`` sequences of ``context_len``.

    Returns a DataFrame with rows weights / kv_cache / total in bytes and GB (1e9 bytes).
    Activations of one decode step are tiny next to these and left out.
    """
    import pandas as pd

    w = weight_bytes(config, dtype)
    kv = kv_cache_bytes_per_token(config, dtype) * batch_size * context_len
    df = pd.DataFrame({"item": ["weights", "kv_cache", "total"], "bytes": [w, kv, w + kv]})
    df["gb"] = df["bytes"] / 1e9
    return df


def forward_flops_per_token(config: Any, context_len: int = 0) -> float:
    """FLOPs to run one token through the model, attending over ``context_len`` earlier tokens.

    Each weight matrix element is one multiply and one add per token: 2 FLOPs. That covers every
    matmul (attention projections, MLP, output head; the embedding lookup is a copy, not a matmul).
    Attention adds QK^T and softmax(.)V: 2 x 2 x context x (heads x head_dim) per layer.
    """
    k = _dims(config)
    df = param_counts(config).set_index("component")["params"]
    matmul_params = df["attention"] + df["mlp"] + k["V"] * k["d"]  # the head multiplies even when tied
    return 2.0 * matmul_params + 4.0 * k["L"] * context_len * k["h"] * k["hd"]


def compare_param_counts(config: Any, model: Any) -> "Any":
    """Predicted (from the config) vs measured (from the model's tensors) parameters per component."""
    pred = param_counts(config).set_index("component")["params"].rename("predicted")
    meas = measured_param_counts(model).set_index("component")["params"].rename("measured")
    df = pred.to_frame().join(meas, how="outer").fillna(0).astype("int64")
    df.loc["total"] = df.sum()
    df["difference"] = df["measured"] - df["predicted"]
    return df.reset_index()
