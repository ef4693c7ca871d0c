"""How each parallel strategy holds a model: one process, DDP replicas, or FSDP2 shards.

The training and tensor-parallel workers build their model here, so every rank starts from the same
weights (``build_model``: a checkpoint, or random weights in a published shape from the same seed), and
``wrap`` applies the strategy:

- ``single``: the model as it is, in one process (the baseline);
- ``ddp`` / ``ddp_nosync``: a full replica per rank; gradients all-reduced in buckets of
  ``bucket_cap_mib`` MiB while backward runs (``ddp_nosync`` never syncs: a timing reference only);
- ``fsdp``: FSDP2 ``fully_shard`` per decoder layer and once for the root (embeddings, final norm, head):
  parameters, gradients and optimizer states sharded over the ranks (ZeRO-3), gathered layer by layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from smml_lib.distributed.runtime import DistEnv
from smml_lib.distributed.train_config import TrainConfig
from smml_lib.models.anatomy import preset_config
from smml_lib.models.loading import load_llama
from smml_lib.models.tiny import tiny_llama_path


def build_model(model_id: str, device: Any, *, layers: int | None = None, seed: int = 0) -> tuple[Any, Any]:
    """The model in fp32 on ``device``, identical on every rank, in training mode, plus a tokenizer for the data.

    ``model_id``: anything ``load_llama`` takes, or ``preset:<name>`` for random weights in a published shape
    (``layers`` overrides its depth); presets use the tiny tokenizer, whose ids are valid in any Llama vocabulary.
    """
    if model_id.startswith("preset:"):
        cfg = preset_config(model_id.split(":", 1)[1])
        if layers:
            cfg["num_hidden_layers"] = layers
        torch.manual_seed(seed)  # same seed on every rank -> identical random weights
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="sdpa"))
        tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path())
    else:
        model, tokenizer = load_llama(model_id, dtype="fp32", device=device, attn_implementation="sdpa")
    model.config.use_cache = False
    model.train()
    return model, tokenizer


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute each decoder layer in backward instead of keeping its activations."""
    kwargs = {"use_reentrant": False}  # non-reentrant checkpointing works with DDP and FSDP2
    if hasattr(model, "activation_checkpointing_enable"):  # the transformers >= 5.2x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def wrap(model: Any, strategy: str, run: TrainConfig, env: DistEnv) -> Any:
    """Apply the parallel strategy (and activation checkpointing) to a freshly built model."""
    if run.activation_checkpointing:
        enable_activation_checkpointing(model)
    if strategy == "single":
        if env.world_size > 1:
            raise ValueError("strategy 'single' runs in one process: launch it with nproc=1")
        return model
    if not env.distributed:
        raise ValueError(f"strategy {strategy!r} needs torchrun (the launcher) to start the processes")
    if strategy in ("ddp", "ddp_nosync"):
        ids = [env.local_rank] if env.device.type == "cuda" else None
        return DDP(model, device_ids=ids, gradient_as_bucket_view=True, bucket_cap_mb=run.bucket_cap_mib)
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if run.precision == "bf16" else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=run.reshard_after_forward, mp_policy=mp)
    # the root group (embeddings, final norm, head) is needed again right at the start of backward: with the
    # default (None) FSDP keeps it gathered after forward instead of freeing and re-gathering it at once
    fully_shard(model, mesh=mesh, reshard_after_forward=None if run.reshard_after_forward else False, mp_policy=mp)
    return model
