"""Module 03 lab helpers: the course's workers as multi-node Slurm jobs, their summaries and plots.

The notebooks stay short and keep their sizes in their parameters cell: they describe the training run as
a ``TrainConfig`` and the machines as ``Resources``; ``train_job`` / ``collectives_job`` turn those into a
``TorchrunJob``; ``training_summary`` / ``busbw_frame`` turn finished jobs into tables; the plots go
through ``smml_lib.common.plots``.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd

from smml_lib.cluster.jobs import JobRun, TorchrunJob
from smml_lib.common import plots
from smml_lib.common.display import show
from smml_lib.common.paths import output_dir
from smml_lib.distributed.collectives import summarize
from smml_lib.distributed.train_config import TrainConfig

JOB_CHECKPOINTS = "$SMML_RUN_DIR/ckpt"  # a job's checkpoints, in its run folder on the shared file system


@dataclass(frozen=True)
class Resources:
    """What a job asks Slurm for on each node. ``exclusive``: no other job shares the node's GPUs, CPUs,
    PCIe or network (a real cluster); the local cluster's nodes share one machine, so not there."""

    nodes: int
    nproc_per_node: int
    gpus_per_node: int
    exclusive: bool

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node


def resources(lab: Any, gpus_per_node: int, nodes: int = 2) -> Resources:
    """Real mode: ``nodes`` whole GPU nodes, one process per GPU (2 x g6.12xlarge: 4 L4 each). Smoke mode: one
    CPU process on each node of the local cluster. Real mode on a machine without GPUs (a rehearsal) keeps
    ``gpus_per_node`` processes per node but asks Slurm for no GPUs, which such a cluster could never grant."""
    if lab.smoke:
        return Resources(nodes, 1, 0, False)
    return Resources(nodes, gpus_per_node, gpus_per_node if lab.gpu else 0, lab.gpu)


def worker_job(worker: str, args: list[str], name: str, res: Resources, *, time_limit: str = "00:10:00") -> TorchrunJob:
    """A multi-node job of one of the course's workers (``smml_lib.distributed.workers.<worker>``) on ``res``."""
    return TorchrunJob(worker, args, nodes=res.nodes, nproc_per_node=res.nproc_per_node,
                       gpus_per_node=res.gpus_per_node, exclusive=res.exclusive, name=name, time_limit=time_limit)


def train_job(run: TrainConfig, name: str, res: Resources, *, time_limit: str = "00:20:00") -> TorchrunJob:
    """A multi-node job of the training worker running ``run``."""
    return worker_job("train", run.argv(), name, res, time_limit=time_limit)


def collectives_job(name: str, res: Resources, *, max_bytes: str, min_bytes: str = "16K", iters: int = 20,
                    warmup: int = 5, time_limit: str = "00:10:00") -> TorchrunJob:
    """An all-reduce sweep (the collectives worker) from ``min_bytes`` to ``max_bytes``, factor 4 between sizes."""
    args = ["--ops", "all_reduce", "--min-bytes", min_bytes, "--max-bytes", max_bytes, "--factor", "4",
            "--iters", str(iters), "--warmup", str(warmup)]
    return worker_job("collectives", args, name, res, time_limit=time_limit)


def rank0(run: JobRun, tag: str | None = None) -> Any:
    """Rank 0's result row of a finished job (a pandas Series)."""
    df = run.results(tag)
    if df.empty:
        raise ValueError(f"job {run.job_id} wrote no results in {run.run_dir}/results")
    return df.sort_values("rank").iloc[0]


def training_summary(runs: dict[str, JobRun]) -> Any:
    """One row per training job: where it ran, step time, throughput, final loss, restarts, checkpoints."""
    rows = []
    for label, run in runs.items():
        r = rank0(run)
        rows.append({"run": label, "where": run.where, "job_id": run.job_id, "nodes": int(r["num_nodes"]),
                     "world_size": int(r["world_size"]), "backend": r["backend"], "params": int(r["params"]),
                     "step_time_s": r["step_time_s"], "tokens_per_s": r["tokens_per_s"],
                     "final_loss": r["losses"][-1], "first_step": int(r["first_step"]),
                     "last_step": int(r["last_step"]),
                     "restarts": run.restarts, "resumed_from_step": r.get("resumed_from_step"),
                     "checkpoint_bytes": r.get("checkpoint_bytes"), "save_s": r.get("save_s"),
                     "load_s": r.get("load_s"),
                     "job_wall_s": run.elapsed_s, "queued_s": run.seconds_in("PENDING")})
    return pd.DataFrame(rows)


def losses_frame(runs: dict[str, JobRun]) -> Any:
    """Loss per global step per job (rank 0), long format: run, step, loss."""
    rows = []
    for label, run in runs.items():
        for attempt, df in enumerate(run.attempt_results()):
            if df.empty:
                continue
            r = df.sort_values("rank").iloc[0]
            rows += [{"run": label, "attempt": attempt, "step": int(r["first_step"]) + i, "loss": loss}
                     for i, loss in enumerate(r["losses"])]
    return pd.DataFrame(rows)


def plot_losses(runs: dict[str, JobRun], name: str, *, extra: dict[str, list[float]] | None = None) -> Any:
    """Loss curves of several jobs on one axis (a resumed job starts at its checkpoint step)."""
    df = losses_frame(runs)
    fig, ax = plots.figure(title="Training loss per step")
    for label, part in df.groupby("run", sort=False):
        ax.plot(part["step"], part["loss"], marker="o", label=label, alpha=0.8)
    ax.set_xlabel("global step")
    ax.set_ylabel("loss")
    ax.legend()
    plots.finish(fig, name)
    return df


def plot_timeline(runs: dict[str, JobRun], name: str) -> Any:
    """Each job's life as horizontal bars: waiting in the queue vs running (the requeue gap shows too)."""
    colors = {"PENDING": "#c9c9c9", "RUNNING": "#3b7dd8", "COMPLETING": "#9ab8e6"}
    fig, ax = plots.figure(size=(8, 0.6 + 0.5 * len(runs)), title="Job timelines (Slurm states)")
    for i, (label, run) in enumerate(runs.items()):
        for a, b in zip(run.timeline, run.timeline[1:]):
            ax.barh(i, b["t_s"] - a["t_s"], left=a["t_s"], color=colors.get(a["state"], "#e0a050"), height=0.5)
    ax.set_yticks(range(len(runs)), list(runs))
    ax.set_xlabel("seconds since submission")
    for state, c in colors.items():
        ax.barh(0, 0, color=c, label=state)
    ax.legend(loc="lower right", fontsize=8)
    plots.finish(fig, name)


def busbw_frame(runs: dict[str, JobRun]) -> Any:
    """The all-reduce sweep of each collectives job (slowest rank per size), labelled by run."""
    parts = []
    for label, run in runs.items():
        s = summarize(run.results("collectives"))
        s.insert(0, "run", label)
        parts.append(s)
    return pd.concat(parts, ignore_index=True)


def plot_busbw(frame: Any, name: str, *, link_gbps: float | None = None) -> None:
    """Bus bandwidth vs message size per run, with the limited link's rate as a dashed line."""
    fig, ax = plots.figure(title="All-reduce bus bandwidth: inside a node vs across nodes")
    for label, part in frame.groupby("run", sort=False):
        ax.plot(part["size_bytes"] / 2**20, part["busbw_gbps"], marker="o", label=label)
    if link_gbps:
        ax.axhline(link_gbps, ls="--", color="0.4", label=f"link limit {link_gbps * 8:.3g} Gbit/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("message size (MiB)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    ax.legend(fontsize=8)
    plots.finish(fig, name)


def allreduce_bytes_per_rank(size_bytes: float, world_size: int) -> float:
    """Bytes each rank sends (and receives) in a ring all-reduce of ``size_bytes``: 2 (n-1)/n x size."""
    return 2 * (world_size - 1) / world_size * size_bytes if world_size > 1 else 0.0


def show_script(script_text: str, keep: tuple[str, ...] = ()) -> None:
    """Show an sbatch script (or only the lines containing ``keep`` words) as a highlighted block."""
    lines = script_text.splitlines()
    if keep:
        lines = [ln for ln in lines if any(k in ln for k in keep)]
    text = "\n".join(lines)
    show(text, markdown=f"```bash\n{text}\n```")


def comm_bytes_per_step(strategy: str, params: int, world_size: int) -> float:
    """Bytes each link of the ring carries per optimizer step (the network's share of a training step).

    - DDP: one all-reduce of the fp32 gradients: ``2 (n-1)/n x 4 P``.
    - FSDP (bf16 parameters, fp32 gradient reduction): all-gather the parameters for forward and again for
      backward (``2 x (n-1)/n x 2 P``) and reduce-scatter the gradients (``(n-1)/n x 4 P``).

    In a ring that spans two nodes, two of its edges cross the network, one each way, and each carries
    this volume, so ``time >= bytes / link rate`` however many GPUs share the node.
    """
    n = world_size
    if n < 2:
        return 0.0
    if strategy.startswith("ddp"):
        return allreduce_bytes_per_rank(4.0 * params, n)
    if strategy == "fsdp":
        return (n - 1) / n * (2 * 2.0 * params + 4.0 * params)
    raise ValueError(f"no traffic model for strategy {strategy!r}")


def checkpoint_bytes_predicted(params: int, tied_params: int = 0) -> float:
    """Model + AdamW state in a checkpoint: fp32 weights + two fp32 moments = 12 bytes per parameter.

    A tied weight (Llama-3.2-1B's embedding is its output head) is one parameter to the optimizer, but the
    model's state dict names it twice (``embed_tokens.weight`` and ``lm_head.weight``) and the checkpoint
    writes both: 4 more bytes for each of ``tied_params`` (found by the real-mode rehearsal: 4,933 MB
    measured for a 1-layer Llama-3.2-1B, 12 B x 323.5 M + 4 B x 262.7 M = 4,933 MB predicted).
    """
    return 12.0 * params + 4.0 * tied_params


def fresh_folder(name: str) -> Any:
    """A new, empty folder ``<outputs>/<name>/<time>-<random>`` (a re-run cell never reuses an old one)."""
    return output_dir(name, f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
