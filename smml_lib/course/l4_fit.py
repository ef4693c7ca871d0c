"""Does every lab's real mode fit one L4? Peak GPU memory predicted from the real configs, before any GPU.

A learner meets real mode on a g6.12xlarge: four L4s, each shown by EC2 as 22,888 MiB (22.35 GiB), of
which the CUDA context takes a few hundred MiB before torch allocates anything. A lab whose real sizes
do not fit fails there with an out-of-memory error after minutes of downloading. This module predicts,
for the largest step of every real-mode lab, the bytes torch will hold on the busiest GPU, from the
*published* configs (``anatomy.preset_config``: Llama-3.2-1B, Llama-2-13B) and the sizes in the lab's
own parameters cell (read from the notebook, so a changed default is checked too):

- inference: weights + KV cache + the logits of the largest forward + one layer's transient activations;
- training: ``planner.training_memory`` (weights, gradients, AdamW, activations, FSDP's gathered layers);
- GEMM labs: the three operands of the largest matmul (and the copied buffer of the bandwidth test);
- Lab 02-1's 13B split: accelerate's ``infer_auto_device_map`` on a meta-device model with the lab's
  ``max_memory`` (``device_map.plan_device_map``), plus what else that lab puts on GPU 0.

``fit_table()`` adds the CUDA context and compares with the card, requiring ``MARGIN_FRACTION`` of it
to stay free (the allocator's fragmentation, cuBLAS workspaces, compile-time graph pools).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd

from smml_lib.common.device import bytes_per_element
from smml_lib.common.paths import repo_root
from smml_lib.course.plainrun import code_cells, declared_parameters
from smml_lib.distributed.collectives import parse_size
from smml_lib.models import anatomy, device_map, planner
from smml_lib.perf import gemm

GIB = 2**30
L4_USABLE_GIB = 22888 / 1024  # 22.35 GiB: an L4's memory as EC2's DescribeInstanceTypes reports it
CUDA_CONTEXT_GIB = 0.5  # the CUDA context, cuBLAS workspace and kernels: held outside torch's allocator
MARGIN_FRACTION = 0.10  # of the card that must stay free at each lab's predicted peak
ONE_B, BIG = "Llama-3.2-1B", "Llama-2-13b"


@dataclass(frozen=True)
class Need:
    """The predicted peak of one lab step on the busiest GPU: what it is, where (notebook cell), bytes."""

    lab: str
    notebook: str  # path from the repository root
    cell_id: str
    step: str
    torch_bytes: float  # tensors torch holds at the peak (compare with torch.cuda.max_memory_allocated)


def notebook_params(notebook: str) -> dict[str, Any]:
    """The default values of a lab's parameters cell (the real-mode sizes a learner runs)."""
    return declared_parameters(code_cells(repo_root() / notebook))


def inference_peak_bytes(cfg: Any, *, dtype: str = "bf16", batch: int = 1, forward_tokens: int = 1,
                         cache_tokens: int = 0, full_logits: bool = True) -> float:
    """Bytes on the GPU while ``batch`` sequences of ``forward_tokens`` go through one forward pass.

    Weights + the KV cache of ``cache_tokens`` per sequence + the logits (every position's unless
    ``full_logits`` is False, as with ``logits_to_keep=1``) + one decoder layer's live activations
    (the residual stream, q/k/v, and the MLP's gate, up and product: inference frees each layer's after use).
    """
    m = anatomy.ModelDims.of(cfg)
    b = bytes_per_element(dtype)
    tokens = batch * forward_tokens
    weights = anatomy.weight_bytes(cfg, dtype)
    kv = anatomy.kv_cache_bytes_per_token(cfg, dtype) * batch * cache_tokens
    logits = (tokens if full_logits else batch) * m.vocab_size * b
    layer = tokens * (3 * m.hidden_size + m.q_dim + 2 * m.kv_dim + 3 * m.intermediate_size) * b
    return weights + kv + logits + layer


def gemm_bytes(n: int, dtype: str) -> float:
    """The three operands of an n x n x n matmul (``gemm.gemm_min_bytes``: the bytes its roofline counts)."""
    return gemm.gemm_min_bytes(n, n, n, dtype)


def training_peak_bytes(model: str, *, layers: int | None, strategy: str, num_gpus: int, micro_batch: int,
                        seq_len: int, grad_accum: int = 1) -> float:
    """``planner.training_memory``'s GPU peak for a preset with ``layers`` decoder layers kept (bf16 mixed)."""
    cfg = anatomy.preset_config(model.removeprefix("preset:"))
    if layers:
        cfg = cfg | {"num_hidden_layers": layers}
    df = planner.training_memory(cfg, strategy=strategy, num_gpus=num_gpus, micro_batch=micro_batch,
                                 seq_len=seq_len, precision="bf16", grad_accum=grad_accum)
    return float(df.attrs["peak_bytes"])


def _one_b() -> dict[str, Any]:
    return anatomy.preset_config(ONE_B)


def _lab_00(p: dict[str, Any], nb: str) -> list[Need]:
    one, m = _one_b(), "00_Getting_Started/"
    w = anatomy.weight_bytes(one, "bf16")
    if nb.endswith("01_environment_and_vocabulary.ipynb"):
        return [Need("00-1", nb, "a607888f", "ceilings: bf16 matmul + copied buffer (in and out)",
                     max(gemm_bytes(p["matmul_size"], "bf16"), 2 * p["copy_mib"] * 2**20))]
    if nb.endswith("02_model_anatomy.ipynb"):
        return [Need("00-2", nb, "b662587e", f"{p['kv_tokens']}-token forward with the KV cache",
                     inference_peak_bytes(one, forward_tokens=p["kv_tokens"], cache_tokens=p["kv_tokens"]))]
    if nb.endswith("03_running_a_model.ipynb"):
        longest = max(p["prefill_lengths"])
        return [Need("00-3", nb, "9f45898a", "ceilings beside the loaded model",
                     w + max(gemm_bytes(p["matmul_size"], "bf16"), 2 * p["copy_mib"] * 2**20)),
                Need("00-3", nb, "8db663df", f"prefill of {longest} tokens; decode at batch {max(p['decode_batches'])}",
                     max(inference_peak_bytes(one, forward_tokens=longest, cache_tokens=longest + 2),
                         inference_peak_bytes(one, batch=max(p["decode_batches"]), forward_tokens=64,
                                              cache_tokens=64 + p["new_tokens"]))),
                Need("00-3", nb, "0d3c7403", "no KV cache: the whole sequence every step",
                     inference_peak_bytes(one, forward_tokens=p["cache_prompt_tokens"] + p["new_tokens"]))]
    assert nb == m + "04_compiling_a_model.ipynb", nb
    chain = 4 * p["chain_mi_elements"] * 2**20 * 4  # input, output and two intermediates of the eager chain (fp32)
    fwd = inference_peak_bytes(one, forward_tokens=p["forward_tokens"])
    logits_copies = 2 * p["forward_tokens"] * one["vocab_size"] * (2 + 4)  # eager + compiled logits, and .float()
    return [Need("00-4", nb, "61027267", "elementwise chain, eager and compiled", chain),
            Need("00-4", nb, "1f7342fc", f"{p['forward_tokens']}-token forward, eager and compiled",
                 fwd + logits_copies)]


def _lab_01(p: dict[str, Any], nb: str) -> list[Need]:
    one = _one_b()
    if nb.endswith("01_llama_on_one_gpu.ipynb"):
        return [Need("01-1", nb, "91071100", f"memory measurement: {p['batch']} x {p['context_len']} tokens",
                     inference_peak_bytes(one, batch=p["batch"], forward_tokens=p["context_len"],
                                          cache_tokens=p["context_len"], full_logits=False)),
                Need("01-1", nb, "abe18f67", f"{p['prompt_tokens']}-token prefills under telemetry",
                     inference_peak_bytes(one, forward_tokens=p["prompt_tokens"], cache_tokens=p["prompt_tokens"] + 1))]
    if nb.endswith("02_gemm_and_roofline.ipynb"):
        big = max(p["square_sizes"])
        lm_head = max(p["layer_tokens"]) * (one["hidden_size"] + one["vocab_size"]) * 2 + one["vocab_size"] * \
            one["hidden_size"] * 2  # A (tokens x d), C (tokens x vocab) and B (d x vocab) in bf16
        return [Need("01-2", nb, "b8c47896", f"square GEMM {big}³ in bf16", gemm_bytes(big, "bf16")),
                Need("01-2", nb, "f69ba5b2", f"lm_head GEMM at {max(p['layer_tokens'])} tokens", lm_head),
                Need("01-2", nb, "5c6851df", f"{p['dtype_size']}³ GEMM in fp32", gemm_bytes(p["dtype_size"], "fp32")),
                Need("01-2", nb, "91c3f89c", "MAMF search: largest shape 16384³ in bf16", gemm_bytes(16384, "bf16"))]
    ctx = p["prompt_tokens"] + p["new_tokens"]
    return [Need("01-3", nb, "e5eca168", "ladder: the 1B model loaded in fp32, no-cache rung",
                 inference_peak_bytes(one, dtype="fp32", forward_tokens=ctx)),
            Need("01-3", nb, "b1c9ec58", f"batch sweep up to {max(p['batch_sizes'])}: static cache and prefill",
                 inference_peak_bytes(one, batch=max(p["batch_sizes"]), forward_tokens=p["prompt_tokens"],
                                      cache_tokens=ctx, full_logits=False))]


def _lab_02(p: dict[str, Any], nb: str) -> list[Need]:
    if nb.endswith("01_big_model_on_four_gpus.ipynb"):
        budget = {i: p["gpu_budget"] for i in range(p["num_gpus"])}
        plan = device_map.plan_device_map(BIG, budget, dtype="bf16")
        gpu0 = float(plan.frame.set_index("device").loc[0, "predicted_bytes"])
        one = anatomy.weight_bytes(_one_b(), "bf16")
        tp_cfg = anatomy.preset_config(BIG) | {"num_hidden_layers": p["tp_layers"]}
        tp_full = inference_peak_bytes(tp_cfg, forward_tokens=p["tp_seq_len"])
        return [Need("02-1", nb, "8852d111", f"GPU 0: its share of the 13B split ({plan.num_devices_used} GPUs, "
                     f"offloaded: {plan.offloaded}) + the 1B model", gpu0 + one
                     + inference_peak_bytes(anatomy.preset_config(BIG), forward_tokens=8) - anatomy.weight_bytes(
                         anatomy.preset_config(BIG), "bf16")),
                Need("02-1", nb, "bd3cd83a", f"TP: unsplit {p['tp_layers']}-layer 13B + its shard",
                     tp_full * (1 + 1 / p["num_gpus"]))]
    if nb.endswith("02_parallelism_and_collectives.ipynb"):
        share = 4  # global batch 4 per process, micro-batch 2: two accumulation steps
        return [Need("02-2", nb, "450780e4", f"all-gather of {p['coll_max_bytes']}",
                     3 * parse_size(p["coll_max_bytes"])),
                Need("02-2", nb, "047e1b0c", f"DDP, {p['ddp_layers']} layers, 2 x {p['ddp_seq_len']} tokens",
                     training_peak_bytes("Llama-3.2-1B", layers=p["ddp_layers"], strategy="ddp", num_gpus=4,
                                         micro_batch=2, seq_len=p["ddp_seq_len"], grad_accum=share // 2))]
    if nb.endswith("03_ddp_vs_fsdp_training.ipynb"):
        needs = []
        for n in (1, 2, 4):
            per_rank = p["global_batch"] // n
            for strategy in (("single",) if n == 1 else ("ddp", "fsdp")):
                needs.append(Need("02-3", nb, "8006b9e6", f"{strategy} on {n} GPU(s)",
                                  training_peak_bytes(p["model_id"], layers=p["layers"], strategy=strategy,
                                                      num_gpus=n, micro_batch=p["micro_batch"], seq_len=p["seq_len"],
                                                      grad_accum=max(1, per_rank // p["micro_batch"]))))
        return needs
    return []


def _lab_03_04(p: dict[str, Any], nb: str) -> list[Need]:
    if nb.endswith(("02_multi_node_training.ipynb", "03_networking_and_checkpoints.ipynb")):
        world = 2 * p["gpus_per_node"]
        cell = "653ed4f0" if "02_multi" in nb else "1f766f24"
        return [Need("03-2" if "02_multi" in nb else "03-3", nb, cell,
                     f"FSDP of {p['train_model']} over {world} ranks, {p['train_global_batch'] // world} x "
                     f"{p['train_seq_len']} tokens per rank",
                     training_peak_bytes(p["train_model"], layers=None, strategy="fsdp", num_gpus=world,
                                         micro_batch=max(1, p["train_global_batch"] // world),
                                         seq_len=p["train_seq_len"]))]
    if nb.endswith("04_inference_server.ipynb"):
        return [Need("03-4", nb, "eea7dccb", f"server: {p['max_batch']} slots x 4,096 tokens of KV cache",
                     inference_peak_bytes(_one_b(), batch=p["max_batch"], forward_tokens=256, cache_tokens=4096,
                                          full_logits=False))]
    if nb.endswith("02_cost_per_token_and_training_run.ipynb"):
        return [Need("04-2", nb, "8dc7471e", "idle telemetry: batch-1 generation",
                     inference_peak_bytes(anatomy.preset_config(p["model_preset"]), forward_tokens=64,
                                          cache_tokens=128))]
    if nb.endswith("03_spot_interruption_drill.ipynb"):
        return [Need("04-3", nb, "b18f1d8c", f"FSDP drill, {p['drill_layers']} layers, one GPU at worst",
                     training_peak_bytes(p["drill_model"], layers=p["drill_layers"], strategy="fsdp", num_gpus=1,
                                         micro_batch=p["drill_global_batch"], seq_len=p["drill_seq_len"]))]
    return []


ESTIMATORS: dict[str, Callable[[dict[str, Any], str], list[Need]]] = {
    "00_Getting_Started/01_environment_and_vocabulary.ipynb": _lab_00,
    "00_Getting_Started/02_model_anatomy.ipynb": _lab_00,
    "00_Getting_Started/03_running_a_model.ipynb": _lab_00,
    "00_Getting_Started/04_compiling_a_model.ipynb": _lab_00,
    "01_Leveraging_Hardware/01_llama_on_one_gpu.ipynb": _lab_01,
    "01_Leveraging_Hardware/02_gemm_and_roofline.ipynb": _lab_01,
    "01_Leveraging_Hardware/03_optimizing_llama.ipynb": _lab_01,
    "02_Multi-Accelerator_Distribution/01_big_model_on_four_gpus.ipynb": _lab_02,
    "02_Multi-Accelerator_Distribution/02_parallelism_and_collectives.ipynb": _lab_02,
    "02_Multi-Accelerator_Distribution/03_ddp_vs_fsdp_training.ipynb": _lab_02,
    "03_Multi-Node_Orchestration/02_multi_node_training.ipynb": _lab_03_04,
    "03_Multi-Node_Orchestration/03_networking_and_checkpoints.ipynb": _lab_03_04,
    "03_Multi-Node_Orchestration/04_inference_server.ipynb": _lab_03_04,
    "04_Cost_Optimization/02_cost_per_token_and_training_run.ipynb": _lab_03_04,
    "04_Cost_Optimization/03_spot_interruption_drill.ipynb": _lab_03_04,
}
# Labs whose real mode puts nothing model-sized on a GPU: 02-4 and 04-1 (arithmetic and prices), 03-1 (a hello job).
NO_GPU_MEMORY = ("02_Multi-Accelerator_Distribution/04_scaling_laws.ipynb",
                 "03_Multi-Node_Orchestration/01_orchestrators_and_local_cluster.ipynb",
                 "04_Cost_Optimization/01_capacity_and_prices.ipynb")


def lab_needs(notebook: str, params: dict[str, Any] | None = None) -> list[Need]:
    """Every predicted peak of one lab, at its parameters cell's defaults (or ``params`` laid over them)."""
    return ESTIMATORS[notebook](notebook_params(notebook) | dict(params or {}), notebook)


def fit_table(params: dict[str, dict[str, Any]] | None = None) -> Any:
    """One row per lab step: predicted GiB on the busiest L4 (torch + CUDA context), the card, the margin.

    ``fits`` is True when at least ``MARGIN_FRACTION`` of the card stays free. ``params`` maps a notebook
    path to parameter values laid over its defaults (what a papermill run with ``-p`` would use).
    """
    rows = []
    for nb in ESTIMATORS:
        for need in lab_needs(nb, (params or {}).get(nb)):
            peak = need.torch_bytes / GIB + CUDA_CONTEXT_GIB
            rows.append({"lab": need.lab, "notebook": need.notebook, "cell_id": need.cell_id, "step": need.step,
                         "peak_gib": peak, "card_gib": L4_USABLE_GIB, "margin_gib": L4_USABLE_GIB - peak,
                         "margin_pct": 100 * (1 - peak / L4_USABLE_GIB),
                         "fits": peak <= (1 - MARGIN_FRACTION) * L4_USABLE_GIB})
    return pd.DataFrame(rows)
