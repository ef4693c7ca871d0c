"""How long each lab's real mode runs on a g6.12xlarge, predicted from the roofline until it is measured.

Nobody has timed real mode on a g6.12xlarge yet, so the README's run times are predictions, built the
way Module 01 teaches: every step a lab's cells run is a number of FLOPs and a number of bytes, and on an
L4 it takes at least ``max(FLOPs / dense peak, bytes / bandwidth)`` (the datasheet's 121 TFLOP/s bf16,
30.3 fp32, 300 GB/s, from ``perf.hardware``). On top come what the roofline does not see, each a stated
assumption below: downloads at ``DOWNLOAD_MB_PER_S``, weights loaded at ``LOAD_GB_PER_S``, the kernel
launches of an eager forward (``FORWARD_OVERHEAD_S``), ``torch.compile`` (``COMPILE_S``), process
start-ups, and the fixed budgets some labs spend on purpose (timing harness targets, the MAMF search,
load levels, sleeps). Lab sizes are read from each lab's parameters cell, so a changed default changes
the prediction. ``predicted_minutes()`` feeds the README and INSTRUCTORS tables (a test keeps them equal).
"""

from __future__ import annotations

from typing import Any

from smml_lib.common.paths import repo_root
from smml_lib.course.l4_fit import notebook_params
from smml_lib.course.runner import discover_notebooks, lab_number
from smml_lib.distributed.collectives import collective_time_s, message_sizes, parse_size
from smml_lib.models import anatomy
from smml_lib.perf.hardware import lookup_spec

L4 = lookup_spec("NVIDIA L4").spec
DOWNLOAD_MB_PER_S = 100.0  # ASSUMPTION: Hugging Face Hub to one instance, sustained (the NIC allows 5,000)
LOAD_GB_PER_S = 2.0  # ASSUMPTION: safetensors from the local NVMe into GPU memory through the host
BUS_GB_PER_S = 10.0  # ASSUMPTION: collective bus bandwidth between L4s (PCIe, staged in host memory: no P2P)
FORWARD_OVERHEAD_S = 0.02  # ASSUMPTION: kernel launches of one eager Hugging Face forward of a 16-layer Llama
COMPILE_S = 60.0  # ASSUMPTION: torch.compile of a 1B model's forward or decode step, cold cache
LAB_START_S = 15.0  # ASSUMPTION: kernel start, imports, CUDA initialisation
LAUNCH_S = 20.0  # ASSUMPTION: one torchrun launch: processes, CUDA and NCCL initialisation, model build
SLURM_S = 30.0  # ASSUMPTION: the local two-node Slurm cluster starting, or one job's scheduling and start
ONE_B, BIG = anatomy.preset_config("Llama-3.2-1B"), anatomy.preset_config("Llama-2-13b")
LABS = {lab_number(nb): nb.relative_to(repo_root()).as_posix()  # "00-3" -> its notebook, from the repository root
        for nb in discover_notebooks(include_solutions=False)}


def roofline_s(flops: float, nbytes: float, dtype: str = "bf16") -> float:
    """The least time an L4 needs: compute at its dense peak or memory traffic at its bandwidth, whichever is longer."""
    return max(flops / (L4.peak_tflops(dtype) * 1e12), nbytes / (L4.bandwidth_gbs * 1e9))


def forward_s(cfg: Any, *, batch: int = 1, tokens: int = 1, context: int = 0, dtype: str = "bf16") -> float:
    """One forward of ``batch`` x ``tokens`` new tokens over ``context`` earlier ones: roofline + launch overhead."""
    flops = batch * tokens * anatomy.forward_flops_per_token(cfg, context + tokens // 2)
    kv_bytes = batch * (context + tokens) * anatomy.kv_cache_bytes_per_token(cfg, dtype)
    nbytes = anatomy.weight_bytes(cfg, dtype) + kv_bytes
    return roofline_s(flops, nbytes, dtype) + FORWARD_OVERHEAD_S


def generate_s(cfg: Any, *, batch: int = 1, prompt: int = 12, new: int = 32, cache: bool = True,
               dtype: str = "bf16") -> float:
    """A greedy generation: the prefill, then one forward per new token (the whole sequence again without a cache)."""
    steps = [forward_s(cfg, batch=batch, tokens=1, context=prompt + i, dtype=dtype) if cache
             else forward_s(cfg, batch=batch, tokens=prompt + i + 1, dtype=dtype) for i in range(new - 1)]
    return forward_s(cfg, batch=batch, tokens=prompt, dtype=dtype) + sum(steps)


def train_step_s(cfg: Any, *, tokens_per_gpu: int, gpus: int = 1, layers: int | None = None) -> float:
    """One training step: 6 FLOPs per parameter and token (forward + backward) at the bf16 peak, plus the
    gradient all-reduce (DDP) or the equivalent gathers and reduce-scatters (FSDP) at ``BUS_GB_PER_S``."""
    cfg = cfg | ({"num_hidden_layers": layers} if layers else {})
    params = anatomy.count_params_from_config(cfg)
    compute = roofline_s(6 * params * tokens_per_gpu, 16 * params)
    comm = collective_time_s("all_reduce", 2 * params, gpus, BUS_GB_PER_S)  # bf16 gradients; 0 for one GPU
    return compute + comm + 3 * FORWARD_OVERHEAD_S


def load_s(cfg: Any, dtype: str = "bf16") -> float:
    return anatomy.weight_bytes(cfg, dtype) / (LOAD_GB_PER_S * 1e9)


def download_s(cfg: Any) -> float:
    """A checkpoint's download, once per machine (bf16 safetensors)."""
    return anatomy.weight_bytes(cfg, "bf16") / (DOWNLOAD_MB_PER_S * 1e6)


def ceilings_s(matmul_size: int, copy_mib: int, iters: int = 20, dtype: str = "bf16") -> float:
    """``measure_ceilings``: ``iters`` timed matmuls and copies (and as many warm-ups)."""
    return 2 * iters * (roofline_s(2 * matmul_size**3, 0, dtype) + roofline_s(0, 2 * copy_mib * 2**20))


def collectives_s(max_bytes: str, iters: int, warmup: int, gpus: int = 4, min_bytes: str = "16K") -> float:
    """The collectives benchmark: three operations at every message size, at ``BUS_GB_PER_S``."""
    sizes = message_sizes(parse_size(min_bytes), parse_size(max_bytes))
    return 3 * (iters + warmup) * sum(2 * (gpus - 1) / gpus * s / (BUS_GB_PER_S * 1e9) + 50e-6 for s in sizes)


def lab_seconds(lab: str) -> dict[str, float]:
    """The predicted seconds of one lab's real mode on a g6.12xlarge, by step (``LAB_START_S`` included)."""
    p = notebook_params(LABS[lab])
    s: dict[str, float] = {"start": LAB_START_S}
    if lab == "00-1":
        s |= {"doctor": 5.0, "ceilings": ceilings_s(p["matmul_size"], p["copy_mib"])}
    elif lab == "00-2":
        s |= {"download 1B": download_s(ONE_B), "load": load_s(ONE_B),
              "forward": forward_s(ONE_B, tokens=p["kv_tokens"])}
    elif lab == "00-3":
        n = p["new_tokens"]
        s |= {"load": load_s(ONE_B), "ceilings": ceilings_s(p["matmul_size"], p["copy_mib"]),
              "timed generations": 4 * generate_s(ONE_B, new=n),
              "prefill sweep": 3 * sum(generate_s(ONE_B, prompt=t, new=2) for t in p["prefill_lengths"]),
              "decode sweep": 3 * sum(generate_s(ONE_B, batch=b, new=n // 2) for b in p["decode_batches"]),
              "KV cache vs none": 4 * (generate_s(ONE_B, prompt=p["cache_prompt_tokens"], new=n)
                                       + generate_s(ONE_B, prompt=p["cache_prompt_tokens"], new=n, cache=False)),
              "own loop vs generate": 2 * generate_s(ONE_B, new=n)}
    elif lab == "00-4":
        s |= {"compile the elementwise chain": 10.0, "load": load_s(ONE_B), "compile the forward, twice": 2 * COMPILE_S,
              "timed forwards": 100 * forward_s(ONE_B, tokens=p["forward_tokens"]), "graph breaks, recompiles": 30.0}
    elif lab == "01-1":
        s |= {"load": load_s(ONE_B), "memory": forward_s(ONE_B, batch=p["batch"], tokens=p["context_len"]),
              "prefills": p["n_prefill"] * forward_s(ONE_B, tokens=p["prompt_tokens"]),
              "decode": generate_s(ONE_B, prompt=8, new=p["new_tokens"])}
    elif lab == "01-2":
        t = p["gemm_target_s"] * 1.5  # the harness's budget per shape, plus its warm-up
        gemms = len(p["square_sizes"]) + 8 * len(p["layer_tokens"]) + 4 + len(range(*p["wave_range"]))
        s |= {"ceilings": ceilings_s(p["matmul_size"], p["copy_mib"]), "GEMM sweeps (timing budgets)": gemms * t,
              "MAMF search (its budget)": p["mamf_budget_s"]}
    elif lab == "01-3":
        pt, n, r = p["prompt_tokens"], p["new_tokens"], p["repeats"]
        s |= {"ceilings": 2 * ceilings_s(p["matmul_size"], p["copy_mib"]), "load in fp32": load_s(ONE_B, "fp32"),
              "ladder rungs": (1 + r) * (generate_s(ONE_B, prompt=pt, new=n, cache=False, dtype="fp32")
                                         + 2 * generate_s(ONE_B, prompt=pt, new=n, dtype="fp32")
                                         + 2 * generate_s(ONE_B, prompt=pt, new=n)),
              "compile the decode step": COMPILE_S, "load in bf16": load_s(ONE_B),
              "batch sweep, one compile per batch size": len(p["batch_sizes"]) * COMPILE_S
              + (1 + r) * sum(generate_s(ONE_B, batch=b, prompt=pt, new=n) for b in p["batch_sizes"])}
    elif lab == "02-1":
        tp_cfg = BIG | {"num_hidden_layers": p["tp_layers"]}
        s |= {"download 13B": download_s(BIG), "load 13B over 4 GPUs": load_s(BIG),
              "split generation": generate_s(BIG, new=p["new_tokens"]), "ceilings": ceilings_s(p["matmul_size"],
                                                                                                p["copy_mib"]),
              "1B generation": load_s(ONE_B) + generate_s(ONE_B, new=p["new_tokens"]),
              "tensor parallel": LAUNCH_S + 2 * p["tp_iters"] * forward_s(tp_cfg, tokens=p["tp_seq_len"])}
    elif lab == "02-2":
        tokens = 2 * p["ddp_seq_len"] * 2  # micro-batch 2, two accumulation steps (global batch 4 per GPU)
        s |= {"collectives": LAUNCH_S + collectives_s(p["coll_max_bytes"], p["coll_iters"], p["coll_warmup"]),
              "DDP and no-sync runs": LAUNCH_S + 2 * p["ddp_max_steps"] * train_step_s(
                  ONE_B, tokens_per_gpu=tokens, gpus=4, layers=p["ddp_layers"])}
    elif lab == "02-3":
        runs = [(1, "single")] + [(g, st) for g in (2, 4) for st in ("ddp", "fsdp")]
        s |= {"training runs": 5 * LAUNCH_S + sum(p["max_steps"] * train_step_s(
            ONE_B, tokens_per_gpu=p["global_batch"] // g * p["seq_len"], gpus=g, layers=p["layers"]) for g, _ in runs)}
    elif lab == "03-1":
        s |= {"cluster up": SLURM_S, "hello job and failing job": 2 * SLURM_S, "cluster down": 10.0}
    elif lab in ("03-2", "03-3"):
        world = 2 * p["gpus_per_node"]
        cfg = ONE_B | ({"num_hidden_layers": p["train_layers"]} if p.get("train_layers") else {})
        step = train_step_s(cfg, tokens_per_gpu=p["train_global_batch"] // world * p["train_seq_len"], gpus=world)
        # the inter-node link (two g6.12xlarge: 40 Gbps) carries FSDP's traffic: 2 x 2 bytes x parameters per step
        step += 4 * anatomy.count_params_from_config(cfg) / 5e9
        steps = p.get("steps", 4)
        s |= {"cluster up and down": SLURM_S + 10.0, "training jobs": 3 * SLURM_S + 2 * steps * step}
        if lab == "03-3":
            s |= {"collective jobs": 2 * SLURM_S + 2 * collectives_s(p["sweep_max_bytes"], p["sweep_iters"], 5,
                                                                        gpus=world, min_bytes="1M"),
                  "checkpoint to S3 and back": 2 * 12 * anatomy.count_params_from_config(cfg) / 1e9}
    elif lab == "03-4":
        users, answer = (1, 4, 16, 64), (32 + 192) / 2  # cell 2's load levels and mean answer length (real mode)
        b = p["max_batch"]
        level = {f"{name} scheduler": sum(-(-u // cap) * answer * forward_s(ONE_B, batch=min(u, cap), context=200)
                                          for u in users) for name, cap in (("batch-1", 1), ("static", b),
                                                                            ("continuous", b))}
        s |= {"load and server start": load_s(ONE_B) + 10.0, "batching measurement": 2 * generate_s(ONE_B, new=32),
              **level, "overload burst": 4 * answer * forward_s(ONE_B, batch=b, context=200)}
    elif lab == "04-2":
        cfg = anatomy.preset_config(p["model_preset"])
        s |= {"load": load_s(cfg), "requests and idle gaps": p["idle_requests"] * (
            generate_s(cfg, new=p["idle_new_tokens"]) + p["idle_gap_s"])}
    elif lab == "04-3":
        cfg = ONE_B | {"num_hidden_layers": p["drill_layers"]}
        per_rank = max(1, p["drill_global_batch"] // 4) * p["drill_seq_len"]
        step = train_step_s(cfg, tokens_per_gpu=per_rank, gpus=4)
        ckpt = 12 * anatomy.count_params_from_config(cfg) / 1e9  # seconds at 1 GB/s to the local NVMe
        runs = 1 + len([x for x in p["drill_scenarios"].split(",") if x.strip()])
        saves = p["drill_max_steps"] // p["drill_checkpoint_every"] + 1
        s |= {"training runs and resumes": 2 * runs * LAUNCH_S + 2 * runs * p["drill_max_steps"] * step
              + runs * saves * ckpt}
    return s


def predicted_minutes() -> dict[str, float]:
    """Every lab's predicted real-mode run time on a g6.12xlarge, in minutes rounded to 0.5 (at least 0.5)."""
    return {lab: max(0.5, round(2 * sum(lab_seconds(lab).values()) / 60) / 2) for lab in LABS}
