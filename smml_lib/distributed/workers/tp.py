"""Tensor parallelism: split every attention and MLP matmul of a Llama over the ranks, check it still computes
the same thing, and time it.

    torchrun --standalone --nproc-per-node 4 -m smml_lib.distributed.workers.tp --model preset:Llama-3.2-1B

Megatron-style plan, applied with ``torch.distributed.tensor.parallel.parallelize_module`` to each
decoder layer:

- ``q_proj``, ``k_proj``, ``v_proj``, ``gate_proj``, ``up_proj``: ``ColwiseParallel`` -- each rank holds
  1/tp of the output features, i.e. **h/tp query heads and kv/tp key/value heads** (the attention
  reshapes with ``view(..., -1, head_dim)``, so it works on whatever number of heads the rank holds);
- ``o_proj``, ``down_proj``: ``RowwiseParallel`` -- each rank multiplies its slice of the input
  features and one **all-reduce** sums the partial outputs.

So a forward does two all-reduces per layer of ``batch x seq x hidden`` activations: on a machine
without NVLink they cross PCIe at every layer, which is why tensor parallelism is kept inside an
NVLink domain on big clusters. Embeddings, norms and the output head stay replicated here.

Each rank also keeps an unsharded copy of the model and runs the same input through both: the
result reports the largest absolute difference of the logits (fp32: about 1e-6, only the order of the
additions differs).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import numpy as np
import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from smml_lib.common.device import device_name
from smml_lib.distributed.runtime import (
    add_common_args,
    init_distributed,
    maybe_inject_fault,
    print0,
    run_worker,
    write_result,
)
from smml_lib.distributed.strategies import build_model

LAYER_PLAN = {"self_attn.q_proj": "col", "self_attn.k_proj": "col", "self_attn.v_proj": "col",
              "self_attn.o_proj": "row", "mlp.gate_proj": "col", "mlp.up_proj": "col", "mlp.down_proj": "row"}


def tensor_parallelize(model: Any, mesh: Any) -> Any:
    """Shard a HF Llama's attention and MLP projections over ``mesh`` (1-D) in place; returns the model."""
    tp = mesh.size()
    cfg = model.config
    if cfg.num_attention_heads % tp or cfg.num_key_value_heads % tp or cfg.intermediate_size % tp:
        raise ValueError(f"tensor parallel degree {tp} must divide the query heads ({cfg.num_attention_heads}), "
                         f"key/value heads ({cfg.num_key_value_heads}) and MLP width ({cfg.intermediate_size})")
    plan = {name: ColwiseParallel() if kind == "col" else RowwiseParallel() for name, kind in LAYER_PLAN.items()}
    for layer in model.model.layers:
        parallelize_module(layer, mesh, plan)
    return model


def allreduce_bytes_per_forward(cfg: Any, batch: int, seq_len: int, bytes_per_elem: int) -> int:
    """Bytes each TP forward all-reduces: 2 per layer (after o_proj and down_proj) of batch x seq x hidden."""
    return 2 * cfg.num_hidden_layers * batch * seq_len * cfg.hidden_size * bytes_per_elem


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml_lib.distributed.workers.tp", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--iters", type=int, default=5, help="timed forwards of each model")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    add_common_args(p)
    args = p.parse_args(argv)
    env = init_distributed(args.backend, args.pg_timeout_s)
    model, _ = build_model(args.model, env.device, layers=args.layers, seed=args.seed)
    model.eval()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model.to(dtype)
    full = copy.deepcopy(model)  # the unsharded reference, same weights on every rank
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    tensor_parallelize(model, mesh)
    maybe_inject_fault(args, env, 1)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), generator=g).to(env.device)

    def timed(m: Any) -> tuple[Any, list[float]]:
        out, times = None, []
        with torch.no_grad():
            for i in range(args.iters + 1):  # the first call is a warm-up
                if env.device.type == "cuda":
                    torch.cuda.synchronize(env.device)
                t0 = time.perf_counter()
                out = m(input_ids=ids).logits
                if env.device.type == "cuda":
                    torch.cuda.synchronize(env.device)
                if i:
                    times.append(time.perf_counter() - t0)
        return out, times

    ref, t_full = timed(full)
    out, t_tp = timed(model)
    diff = (out.float() - ref.float()).abs().max().item()
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())

    row = {"world_size": env.world_size, "model": args.model, "precision": args.precision, "batch": args.batch,
           "seq_len": args.seq_len, "max_abs_diff": diff, "ref_max_abs": ref.float().abs().max().item(),
           "full_forward_s": float(np.median(t_full)), "tp_forward_s": float(np.median(t_tp)),
           "params_full": sum(p.numel() for p in full.parameters()), "params_this_rank": local,
           "heads_this_rank": model.model.layers[0].self_attn.q_proj.weight.to_local().shape[0]
           // model.model.layers[0].self_attn.head_dim,
           "allreduce_bytes_per_forward": allreduce_bytes_per_forward(model.config, args.batch, args.seq_len,
                                                                     torch.tensor([], dtype=dtype).element_size()),
           "backend": env.backend, "device_name": device_name(env.device)}
    print0(f"TP over {env.world_size} ranks: max |logits_tp - logits_full| = {diff:.2e}; forward "
           f"{row['tp_forward_s'] * 1e3:.1f} ms (TP) vs {row['full_forward_s'] * 1e3:.1f} ms (one rank, whole model)",
           env=env)
    write_result(row, env, tag="tp", folder=args.run_dir)
    return 0


if __name__ == "__main__":
    run_worker(main)
