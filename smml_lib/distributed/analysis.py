"""Tables and plots for the Module 02 labs: training runs, memory predictions, bandwidth, device maps.

The workers write one row per rank; these helpers turn that into what a learner reads: one row per run
(the slowest rank's step time, the largest rank's memory), predictions next to measurements, and the
course's standard figures (through ``smml_lib.common.plots``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from smml_lib.common import plots
from smml_lib.distributed.collectives import busbw_at, collective_time_s
from smml_lib.distributed.train_config import TrainConfig
from smml_lib.models.anatomy import preset_config
from smml_lib.models.loading import resolve_checkpoint
from smml_lib.models.planner import GB, training_memory
from smml_lib.perf.results import load_result


def summarize_training(df: Any) -> Any:
    """One row per (strategy, world size, reshard) from the training worker's per-rank rows."""
    rows = []
    keys = ["strategy", "world_size", "reshard_after_forward"]
    for _, part in df.groupby(keys, dropna=False, sort=False):
        r0 = part.sort_values("rank").iloc[0]
        reshard = r0["reshard_after_forward"]
        kept = r0["strategy"] == "fsdp" and reshard is not None and reshard == reshard and not bool(reshard)
        name = "fsdp_noreshard" if kept else r0["strategy"]
        rows.append({
            "run": f"{name} x{r0['world_size']}", "strategy": name, "world_size": int(r0["world_size"]),
            "tokens_per_s": r0["tokens_per_s"], "step_time_s": part["step_time_s"].max(),
            "mfu": r0["mfu"], "peak_memory_gb": part["peak_memory_bytes"].max() / GB,
            "memory_method": r0["memory_method"], "final_loss": r0["losses"][-1] if r0["losses"] else math.nan,
            "micro_batch": int(r0["micro_batch"]), "grad_accum": int(r0.get("grad_accum", 1) or 1),
            "seq_len": int(r0["seq_len"]), "precision": r0["precision"],
            "activation_checkpointing": bool(r0["activation_checkpointing"]), "device_name": r0["device_name"],
            "params": int(r0["params"]), "global_batch": int(r0["global_batch"]), "model": r0["model"]})
    return pd.DataFrame(rows)


def with_memory_prediction(summary: Any, cfg: Any) -> Any:
    """Add the planner's prediction for each run: ``tensors`` on a CPU (what ``cpu_tensor_bytes`` counts),
    ``peak`` on a GPU (compare with ``max_memory_allocated``), and the error in %."""
    out = summary.copy()
    pred = []
    for _, r in out.iterrows():
        p = training_memory(cfg, strategy=r["strategy"], num_gpus=r["world_size"], micro_batch=r["micro_batch"],
                            seq_len=r["seq_len"], precision=r["precision"],
                            activation_checkpointing=r["activation_checkpointing"],
                            grad_accum=int(r.get("grad_accum", 1) or 1))
        key = "tensors_bytes" if r["memory_method"] == "cpu_tensor_bytes" else "peak_bytes"
        pred.append(p.attrs[key] / GB)
    out["predicted_gb"] = pred
    out["error_pct"] = 100 * (out["predicted_gb"] - out["peak_memory_gb"]) / out["peak_memory_gb"]
    return out


def scaling_efficiency(summary: Any) -> Any:
    """Strong scaling (same global batch): speed-up over the 1-process run and efficiency = speed-up / N."""
    out = summary.copy()
    base = out.loc[out["world_size"] == 1, "tokens_per_s"]
    t1 = float(base.iloc[0]) if len(base) else math.nan
    out["speedup"] = out["tokens_per_s"] / t1
    out["efficiency"] = out["speedup"] / out["world_size"]
    return out


def plot_losses(df: Any, name: str = "m02_loss_curves") -> None:
    """Loss per step of every run (rank 0): identical curves mean the strategies train the same model."""
    fig, ax = plots.figure(title="Training loss per step")
    for _, r in df[df["rank"] == 0].iterrows():
        label = f"{r['strategy']} x{r['world_size']}"
        steps = range(int(r["first_step"]), int(r["first_step"]) + len(r["losses"]))
        ax.plot(list(steps), r["losses"], marker="o", label=label, alpha=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    plots.finish(fig, name)


def plot_memory(summary: Any, name: str = "m02_memory_per_gpu") -> None:
    """Measured vs predicted memory per process for each run."""
    fig, ax = plots.figure(title="Memory per process: planner vs measured")
    x = np.arange(len(summary))
    ax.bar(x - 0.2, summary["predicted_gb"] * 1e3, 0.4, label="planner")
    ax.bar(x + 0.2, summary["peak_memory_gb"] * 1e3, 0.4, label=f"measured ({summary['memory_method'].iloc[0]})")
    ax.set_xticks(x, summary["run"], rotation=15)
    ax.set_ylabel("MB")
    ax.legend()
    plots.finish(fig, name)


def plot_plan(plan: Any, name: str = "m02_training_plan", gpus: int | None = None) -> None:
    """Stacked memory per GPU by component for each strategy (at ``gpus`` GPUs), with the GPU's capacity."""
    part = plan if gpus is None else plan[plan["num_gpus"] == gpus]
    fig, ax = plots.figure(title=f"Training memory per GPU{f' with {gpus} GPUs' if gpus else ''}")
    bottom = None
    labels = [f"{s} x{n}" for s, n in zip(part["strategy"], part["num_gpus"])]
    for comp in ("weights", "gradients", "optimizer", "activations", "gathered_params", "mp_weight_copies"):
        vals = part[f"{comp}_gb"].to_numpy()
        ax.bar(labels, vals, bottom=bottom, label=comp)
        bottom = vals if bottom is None else bottom + vals
    ax.axhline(part["capacity_gb"].iloc[0], color="k", ls="--", lw=1, label="usable GPU memory")
    ax.set_ylabel("GB per GPU")
    ax.legend(fontsize=8)
    plots.finish(fig, name)


def plot_bandwidth(summary: Any, name: str = "m02_bus_bandwidth") -> None:
    """Bus bandwidth vs message size for each collective (log-size axis)."""
    fig, ax = plots.figure(title=f"Bus bandwidth ({summary['backend'].iloc[0]}, {summary['world_size'].iloc[0]} ranks)")
    for op, part in summary.groupby("op"):
        ax.plot(part["size_bytes"] / 2**20, part["busbw_gbps"], marker="o", label=op)
    ax.set_xscale("log")
    ax.set_xlabel("message size (MiB)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    ax.legend()
    plots.finish(fig, name)


def ddp_allreduce_prediction(param_count: int, world_size: int, coll_summary: Any, *, grad_bytes_per_param: int = 4,
                             bucket_cap_mib: float = TrainConfig.bucket_cap_mib) -> dict[str, float]:
    """Predicted time DDP spends all-reducing one step's gradients at the measured bus bandwidth.

    DDP packs gradients into buckets of ``bucket_cap_mib`` MiB (PyTorch's ``bucket_cap_mb=25`` is 25 x 2^20
    bytes) and all-reduces each as backward produces it; each bucket is priced at the bus bandwidth measured
    for its size (smaller messages are slower).
    """
    total = param_count * grad_bytes_per_param
    bucket = bucket_cap_mib * 2**20
    sizes = [bucket] * int(total // bucket) + ([total % bucket] if total % bucket else [])
    t = sum(collective_time_s("all_reduce", s, world_size, busbw_at(coll_summary, "all_reduce", s)) for s in sizes)
    return {"gradient_bytes": float(total), "buckets": len(sizes), "predicted_s": t}


def plot_device_map(frame: Any, name: str = "m02_device_map") -> None:
    """Predicted vs measured weight bytes per device of a device_map split."""
    fig, ax = plots.figure(title="Weights per device: plan vs measured")
    x = np.arange(len(frame))
    ax.bar(x - 0.2, frame["predicted_gb"], 0.4, label="planned (accelerate)")
    ax.bar(x + 0.2, frame["measured_gb"], 0.4, label=frame.attrs.get("how", "measured"))
    ax.set_xticks(x, [f"device {d}" for d in frame["device"]])
    ax.set_ylabel("GB")
    ax.legend(fontsize=8)
    plots.finish(fig, name)


def model_config(model: str, layers: int | None = None) -> dict[str, Any]:
    """The config dict of the model a training run uses (``tiny``, ``preset:<name>``, a folder or hub id)."""
    if model.startswith("preset:"):
        cfg = preset_config(model.split(":", 1)[1])
    else:
        cfg = json.loads((resolve_checkpoint(model)[0] / "config.json").read_text())
    if layers:
        cfg["num_hidden_layers"] = layers
    return cfg


def measured_mfu(mode: str, fallback: float) -> tuple[float, str]:
    """The best MFU Lab 02-3 measured (own result, else the committed reference), else ``fallback``.

    Returns ``(mfu, where it came from)``. A CPU run has no datasheet peak, so no MFU: then the fallback.
    """
    try:
        res = load_result("m02_training_throughput", mode=mode if mode == "real" else None)
    except FileNotFoundError:
        return fallback, "assumed (no Lab 02-3 result yet)"
    vals = res.frame["mfu"].dropna() if "mfu" in res.frame else []
    if len(vals):
        return float(vals.max()), f"measured in Lab 02-3 ({res.source}: {res.frame['device_name'].iloc[0]})"
    return fallback, f"assumed (Lab 02-3 ran on {res.frame['device_name'].iloc[0]}: no datasheet peak, no MFU)"


def predicted_memory_table(cfg: Any, runs: list[tuple[str, int]], *, global_batch: int, seq_len: int,
                           precision: str, micro_batch: int | None = None,
                           activation_checkpointing: bool = False) -> Any:
    """The planner's memory per process (MB, by component) for each ``(strategy, processes)`` run.

    ``micro_batch``: sequences per forward (default: each process's whole share of the global batch).
    """
    rows = []
    for strategy, n in runs:
        mb = micro_batch or global_batch // n
        accum = max(1, global_batch // (mb * n))  # micro-batches per optimizer step on each process
        p = training_memory(cfg, strategy=strategy, num_gpus=n, micro_batch=mb, seq_len=seq_len, precision=precision,
                            activation_checkpointing=activation_checkpointing, grad_accum=accum)
        rows.append({"strategy": strategy, "world_size": n, "micro_batch": mb, "grad_accum": accum,
                     **{c: b / 1e6 for c, b in zip(p["component"], p["bytes"])},
                     "tensors_mb": p.attrs["tensors_bytes"] / 1e6, "peak_mb": p.attrs["peak_bytes"] / 1e6})
    return pd.DataFrame(rows)
