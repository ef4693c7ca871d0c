"""Look inside a checkpoint folder and a loaded model without guessing: files, tensors, bytes.

A Hugging Face checkpoint is just files: ``config.json`` (the shape), ``*.safetensors`` (the weights),
``tokenizer.json`` (+ ``tokenizer_config.json``) and ``generation_config.json``. A safetensors file
starts with a small JSON header listing every tensor's name, dtype, shape and byte range, so we can
inventory a 26 GB checkpoint in milliseconds without loading a single weight.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from smml_lib.models.anatomy import component_of

SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8,
                           "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def checkpoint_files(path: str | Path) -> "Any":
    """Files of a checkpoint folder with their sizes and what they are for (DataFrame)."""
    role = {".safetensors": "weights", ".json": "config / tokenizer", ".model": "tokenizer (sentencepiece)",
            ".txt": "tokenizer / notes", ".md": "notes"}
    rows = [{"file": f.name, "bytes": f.stat().st_size, "mb": f.stat().st_size / 1e6,
             "role": "generation defaults" if f.name == "generation_config.json" else
             "model shape" if f.name == "config.json" else role.get(f.suffix, "other")}
            for f in sorted(Path(path).iterdir()) if f.is_file() and not f.name.startswith(".")]
    return pd.DataFrame(rows)


def read_safetensors_header(file: str | Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file: 8-byte little-endian length, then the JSON."""
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def safetensors_index(path: str | Path) -> "Any":
    """Every tensor in a checkpoint folder's safetensors files: name, component, dtype, shape, params, bytes."""
    rows = []
    for file in sorted(Path(path).glob("*.safetensors")):
        for name, info in read_safetensors_header(file).items():
            if name == "__metadata__":
                continue
            numel = math.prod(info["shape"])
            rows.append({"tensor": name, "component": component_of(name), "dtype": info["dtype"],
                         "shape": tuple(info["shape"]), "params": numel,
                         "bytes": numel * SAFETENSORS_DTYPE_BYTES.get(info["dtype"], 0), "file": file.name})
    return pd.DataFrame(rows)


def model_memory_bytes(model: Any) -> int:
    """Bytes held by a model's parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def kv_cache_bytes(past_key_values: Any) -> int:
    """Bytes of a KV cache returned by a forward pass (keys + values of every layer)."""
    total = 0
    layers = getattr(past_key_values, "layers", None)
    if layers is not None:  # transformers >= 4.56 Cache objects
        for layer in layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total
    for item in past_key_values:  # legacy tuple of (key, value) per layer
        for t in item:
            total += t.numel() * t.element_size()
    return total
