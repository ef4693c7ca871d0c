"""A model too big for one GPU: plan where each layer goes, load it across GPUs, check the plan.

Llama-2-13B in bf16 is 26 GB of weights; an L4 has 24 GB (22.5 GiB visible). Hugging Face accelerate
splits such a model *by layers* over the GPUs (``device_map``): the embeddings and the first decoder
layers on GPU 0, the next on GPU 1, and so on, moving the activations from one GPU to the next. It is
pipeline parallelism without the pipelining: one request uses one GPU at a time, so the split buys
**capacity, not speed** (decode still reads all 26 GB of weights per token, one GPU after the other).

``plan_device_map`` runs the same planning ``from_pretrained(device_map="auto")`` does, on a
meta-device model (no memory, no download): ``get_balanced_memory`` spreads the budget evenly and
``infer_auto_device_map`` assigns whole decoder layers under it. The predicted bytes per device are the
weights assigned to it. ``load_planned`` then loads the real model with exactly that map and measures
each GPU (``torch.cuda.memory_allocated``).

**Smoke mode is a simulation, and says so.** Without GPUs the plan is made for pretend devices with a
small memory limit (the tiny Llama is 12.7 MB in fp32), the model is loaded with every planned device
mapped to the CPU, and "measured" bytes per device are the real parameter tensors grouped by the device
the plan gave them. The planning and the bookkeeping are real; the placement is not.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from accelerate import infer_auto_device_map, init_empty_weights
from accelerate.utils import compute_module_sizes, get_balanced_memory
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

from smml_lib.common.device import resolve_dtype
from smml_lib.models.anatomy import preset_config
from smml_lib.models.loading import load_llama, resolve_checkpoint

NO_SPLIT = ["LlamaDecoderLayer"]  # a decoder layer is never cut in two


def _meta_model(model_id_or_cfg: Any) -> Any:
    """An empty (meta-device) LlamaForCausalLM: shapes only, no memory."""
    if isinstance(model_id_or_cfg, str):
        try:
            cfg = LlamaConfig(**preset_config(model_id_or_cfg))
        except KeyError:
            cfg = AutoConfig.from_pretrained(resolve_checkpoint(model_id_or_cfg)[0])
    else:
        cfg = model_id_or_cfg
    with init_empty_weights():
        model = LlamaForCausalLM(cfg)
    if getattr(cfg, "tie_word_embeddings", False):
        model.tie_weights()  # tied embeddings and head must land on the same device
    return model


@dataclass
class DeviceMapPlan:
    device_map: dict[str, Any]  # module name -> device (int GPU index, "cpu" or "disk")
    max_memory: dict[Any, int]  # the balanced budget the planner used, bytes per device
    dtype: str
    frame: Any  # DataFrame: device, modules, decoder_layers, predicted_bytes, predicted_gb

    @property
    def num_devices_used(self) -> int:
        return int((self.frame["predicted_bytes"] > 0).sum())

    @property
    def offloaded(self) -> bool:
        """True when some weights did not fit any GPU and went to CPU or disk (slow!)."""
        return any(d in ("cpu", "disk") for d in self.device_map.values())


def _prefix_device(name: str, device_map: dict[str, Any]) -> Any:
    best = ""
    for prefix in device_map:
        if (name == prefix or name.startswith(prefix + ".") or prefix == "") and len(prefix) >= len(best):
            best = prefix
    return device_map[best]


def plan_device_map(model_id_or_cfg: Any, max_memory: dict[Any, int | str], dtype: str = "bf16") -> DeviceMapPlan:
    """Plan a layer-wise split as ``device_map="auto"`` would, and predict the weight bytes per device.

    Args:
        model_id_or_cfg: a preset name (``"Llama-2-13b"``), a checkpoint folder / hub id / ``"tiny"``
            (only its config is read), or a ``LlamaConfig``.
        max_memory: budget per device, e.g. ``{0: "20GiB", 1: "20GiB", 2: "20GiB", 3: "20GiB"}``.
        dtype: the dtype the weights will be loaded in.
    """
    tdtype = resolve_dtype(dtype) if dtype != "auto" else torch.bfloat16
    model = _meta_model(model_id_or_cfg)
    log = logging.getLogger("accelerate.utils.modeling")
    level, log.level = log.level, logging.ERROR  # "Device 0 is not available": expected when planning for GPUs
    try:                                          # this machine does not have
        balanced = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=NO_SPLIT, dtype=tdtype)
        dmap = infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=NO_SPLIT, dtype=tdtype)
    finally:
        log.setLevel(level)
    per_device: dict[Any, dict[str, Any]] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        dev = _prefix_device(name, dmap)
        slot = per_device.setdefault(dev, {"bytes": 0, "modules": set()})
        slot["bytes"] += p.numel() * tdtype.itemsize
    for name, dev in dmap.items():
        per_device.setdefault(dev, {"bytes": 0, "modules": set()})["modules"].add(name)
    devices = list(max_memory) + [d for d in per_device if d not in max_memory]
    rows = [{"device": d, "decoder_layers": sum(".layers." in m for m in per_device.get(d, {}).get("modules", ())),
             "modules": ", ".join(sorted(per_device.get(d, {}).get("modules", ()))),
             "predicted_bytes": per_device.get(d, {}).get("bytes", 0)} for d in devices]
    frame = pd.DataFrame(rows)
    frame["predicted_gb"] = frame["predicted_bytes"] / 1e9
    sizes = compute_module_sizes(model, dtype=tdtype)
    frame.attrs["total_bytes"] = int(sizes[""])
    return DeviceMapPlan(dict(dmap), {k: int(v) for k, v in balanced.items()}, str(tdtype).replace("torch.", ""), frame)


def load_planned(model_id: str, plan: DeviceMapPlan, *, simulate: bool | None = None) -> tuple[Any, Any, Any]:
    """Load ``model_id`` with the plan's device map and measure bytes per planned device.

    Returns ``(model, tokenizer, frame)``: the plan's frame plus ``measured_bytes``, ``error_pct`` and
    ``how`` (``cuda.memory_allocated`` or ``simulated: parameter bytes, all on the CPU``).
    ``simulate``: default True when there are fewer GPUs than the plan uses.
    """
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    used = [d for d in plan.device_map.values() if isinstance(d, int)]
    if simulate is None:
        simulate = gpus <= (max(used) if used else 0)
    frame = plan.frame.copy()
    if simulate:
        dmap = {k: "cpu" for k in plan.device_map}
        model, tok = load_llama(model_id, dtype=plan.dtype, device_map=dmap)
        measured: dict[Any, int] = {}
        seen: set[int] = set()
        for name, p in model.named_parameters(remove_duplicate=False):
            if p.untyped_storage().data_ptr() in seen:
                continue
            seen.add(p.untyped_storage().data_ptr())
            dev = _prefix_device(name, plan.device_map)
            measured[dev] = measured.get(dev, 0) + p.numel() * p.element_size()
        how = "simulated: parameter bytes per planned device, all on the CPU"
    else:
        before = {i: torch.cuda.memory_allocated(i) for i in range(gpus)}
        model, tok = load_llama(model_id, dtype=plan.dtype, device_map=plan.device_map)
        measured = {i: torch.cuda.memory_allocated(i) - before[i] for i in range(gpus)}
        how = "cuda.memory_allocated per GPU"
    frame["measured_bytes"] = [measured.get(d, 0) for d in frame["device"]]
    frame["measured_gb"] = frame["measured_bytes"] / 1e9
    frame["error_pct"] = [100 * (p - m) / m if m else 0.0
                          for p, m in zip(frame["predicted_bytes"], frame["measured_bytes"])]
    frame.attrs["how"] = how
    return model, tok, frame


def simulated_max_memory(model_id: str, num_devices: int = 4, dtype: str = "fp32",
                         fraction: float = 0.9) -> dict[int, int]:
    """Pretend devices that are each ``fraction`` x the model's size: the model needs more than one of them
    (as 26 GB of Llama-2-13B needs more than one 24 GB L4). For smoke mode."""
    plan = plan_device_map(model_id, {i: 1 << 40 for i in range(num_devices)}, dtype)
    return {i: int(plan.frame.attrs["total_bytes"] * fraction) for i in range(num_devices)}


def release(*objects: Any) -> None:
    """Free the GPU memory of models the notebook no longer needs (before a worker wants the GPUs)."""
    for obj in objects:
        if hasattr(obj, "to") and hasattr(obj, "parameters"):
            for p in obj.parameters():
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
