"""Predict a Llama's size, memory and work from its config alone, before loading a single weight.

Every number a lab measures is first *predicted* here, from ``config.json``:

- parameters per component (embeddings, attention, MLP, norms, output head);
- bytes of weights per dtype, and of KV cache per token;
- forward FLOPs per token (about 2 x parameters, plus attention over the context).

The same functions serve the tiny model in smoke mode and Llama-3.2-1B / Llama-2-13B for real:
``preset_config("Llama-3.2-1B")`` gives the published shape without any download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from smml_lib.common.device import bytes_per_element

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
    """The config dict of a published Llama (``Llama-3.2-1B``, ``Llama-3.1-8B``, ``Llama-2-13b``).

    A hub id names its preset (``meta-llama/Llama-2-13b-hf``); a local folder never does, even when its name
    contains one (a 2-layer twin in ``twin-llama-2-13b-2-layers/``): its own ``config.json`` is the truth.
    """
    if Path(name).expanduser().is_dir():
        raise KeyError(f"{name!r} is a local checkpoint folder, not a preset: read its config.json")
    for key, cfg in LLAMA_PRESETS.items():
        if key.lower() == name.lower() or key.lower() in name.lower():
            return {"model_type": "llama", **cfg}
    raise KeyError(f"no preset {name!r}; known: {', '.join(LLAMA_PRESETS)}")


def _config_dict(config: Any) -> Mapping[str, Any]:
    """Accept a ``PretrainedConfig``, a dict, or a model (uses ``model.config``)."""
    if hasattr(config, "config") and not isinstance(config, Mapping):
        config = config.config
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return config


@dataclass(frozen=True)
class ModelDims:
    """The shape of a Llama, as every prediction in the course needs it (read from ``config.json``).

    Like nanoGPT's ``GPTConfig`` and torchtitan's ``ModelArgs``: one typed record instead of a dict, with
    the Hugging Face names turned into the ones the formulas use. Grouped-query attention has
    ``num_kv_heads`` < ``num_heads``: each key/value head serves ``num_heads / num_kv_heads`` query heads.
    """

    vocab_size: int
    hidden_size: int  # d, the width of the residual stream
    intermediate_size: int  # the SwiGLU MLP's inner width
    num_layers: int
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads
    head_dim: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def of(cls, config: Any) -> "ModelDims":
        """From a ``PretrainedConfig``, a config dict, a model (its ``.config``), or a ``ModelDims``."""
        if isinstance(config, ModelDims):
            return config
        c = _config_dict(config)
        heads = c["num_attention_heads"]
        return cls(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
                   num_layers=c["num_hidden_layers"], num_heads=heads,
                   num_kv_heads=c.get("num_key_value_heads") or heads,
                   head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                   tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
                   attention_bias=bool(c.get("attention_bias")), mlp_bias=bool(c.get("mlp_bias")))

    @property
    def tied_params(self) -> int:
        """Parameters shared by the embedding and the output head (0 when untied): Llama-3.2-1B's 262.7 M."""
        return self.vocab_size * self.hidden_size if self.tie_word_embeddings else 0

    @property
    def q_dim(self) -> int:
        """Width of all query heads together (``num_heads x head_dim``)."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of all key (or all value) heads together (``num_kv_heads x head_dim``)."""
        return self.num_kv_heads * self.head_dim


def param_counts(config: Any) -> "Any":
    """Parameters per component, predicted from the config. Returns a DataFrame (component, params, share).

    Per decoder layer: attention has Wq (d x h*hd), Wk and Wv (d x kv*hd each: grouped-query attention
    shares each key/value head between h/kv query heads) and Wo (h*hd x d); the SwiGLU MLP has three
    d x ff matrices (gate, up, down); two RMSNorm weight vectors of size d. Tied embeddings mean the
    output head reuses the embedding matrix: zero extra parameters (but the same matmul work).
    """
    m = ModelDims.of(config)
    d = m.hidden_size
    attn = d * m.q_dim + 2 * d * m.kv_dim + m.q_dim * d
    attn += (m.q_dim + 2 * m.kv_dim + d) if m.attention_bias else 0
    mlp = 3 * d * m.intermediate_size + (3 * m.intermediate_size if m.mlp_bias else 0)
    rows = {
        "embeddings": m.vocab_size * d,
        "attention": m.num_layers * attn,
        "mlp": m.num_layers * mlp,
        "norms": (2 * m.num_layers + 1) * d,
        "lm_head": 0 if m.tie_word_embeddings else m.vocab_size * d,
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


def weight_bytes(config: Any, dtype: Any = "bf16") -> float:
    """Bytes of all weights in ``dtype`` (parameters x bytes per element)."""
    return count_params_from_config(config) * bytes_per_element(dtype)


def kv_cache_bytes_per_token(config: Any, dtype: Any = "bf16") -> float:
    """KV-cache bytes one token adds: keys and values, for every layer and key/value head."""
    m = ModelDims.of(config)
    return 2 * m.num_layers * m.kv_dim * bytes_per_element(dtype)


def inference_memory(config: Any, dtype: Any = "bf16", batch_size: int = 1, context_len: int = 2048) -> "Any":
    """Predicted inference memory: weights plus KV cache for ``batch_size`` sequences of ``context_len``.

    Returns a DataFrame with rows weights / kv_cache / total in bytes and GB (1e9 bytes).
    Activations of one decode step are tiny next to these and left out.
    """
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
    m = ModelDims.of(config)
    df = param_counts(config).set_index("component")["params"]
    matmul_params = df["attention"] + df["mlp"] + m.vocab_size * m.hidden_size  # the head multiplies even when tied
    return 2.0 * matmul_params + 4.0 * m.num_layers * context_len * m.q_dim


def compare_param_counts(config: Any, model: Any) -> "Any":
    """Predicted (from the config) vs measured (from the model's tensors) parameters per component."""
    pred = param_counts(config).set_index("component")["params"].rename("predicted")
    meas = measured_param_counts(model).set_index("component")["params"].rename("measured")
    df = pred.to_frame().join(meas, how="outer").fillna(0).astype("int64")
    df.loc["total"] = df.sum()
    df["difference"] = df["measured"] - df["predicted"]
    return df.reset_index()
