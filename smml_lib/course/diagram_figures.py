"""The course diagrams themselves: one function per diagram, drawn on a canvas measured in inches.

x grows to the right and y upwards; ``_box``, ``_arrow``, ``_note`` and ``_cores`` are the only
primitives. To change a diagram, edit its function here and run ``smml diagrams`` (see
``smml_lib.course.diagrams`` for rendering, determinism and the staleness check); commit the source and
``assets/*.svg`` together. ``DIAGRAMS`` at the end lists them (name -> function); the name is the file
name in ``assets/``.
"""

from __future__ import annotations

from typing import Any, Callable

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

# Fill (light) and edge (dark) colours, one pair per course module / role.
PALETTE = {"blue": ("#dce8f5", "#2f5f98"), "teal": ("#d5f0ec", "#1f7a6f"), "orange": ("#fbe8d3", "#b8661a"),
           "purple": ("#e9e1f3", "#6a4a94"), "red": ("#f6ddd7", "#a8402b"), "grey": ("#f1f2f4", "#5b6270"),
           "green": ("#e2f1dc", "#3f7a2c")}


# ---------------------------------------------------------------- drawing primitives (inches, y up)
def _canvas(w: float, h: float, title: str, subtitle: str = "") -> tuple[Any, Any]:
    fig = Figure(figsize=(w, h))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, w)
    ax.set_ylim(0, h)
    ax.set_axis_off()
    ax.text(0.3, h - 0.38, title, fontsize=15, fontweight="bold", color="#1f2430", va="center")
    if subtitle:
        ax.text(0.3, h - 0.72, subtitle, fontsize=9.5, color="#5b6270", va="center")
    return fig, ax


def _box(ax: Any, x: float, y: float, w: float, h: float, title: str = "", body: str = "", *,
         color: str = "grey", solid: bool = False, title_size: float = 10, body_size: float = 8.3,
         valign: str = "top", dashed: bool = False) -> None:
    """A rounded box at (x, y) lower-left, with a bold title and an optional body, both centred."""
    fill, edge = PALETTE[color]
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.08", linewidth=1.3,
                                facecolor=edge if solid else fill, edgecolor=edge,
                                linestyle=(0, (4, 3)) if dashed else "solid"))
    ink = "white" if solid else "#1f2430"
    if valign == "center":
        text = "\n".join(part for part in (title, body) if part)
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=body_size if not title else title_size,
                color=ink, fontweight="bold" if title and not body else "normal", linespacing=1.35)
        return
    if title:
        ax.text(x + w / 2, y + h - 0.2, title, ha="center", va="center", fontsize=title_size, fontweight="bold",
                color=ink)
    if body:
        ax.text(x + w / 2, y + h - (0.4 if title else 0.15), body, ha="center", va="top", fontsize=body_size,
                color=ink, linespacing=1.4)


def _arrow(ax: Any, start: tuple[float, float], end: tuple[float, float], label: str = "", *, color: str = "#3d4452",
           both: bool = False, curve: float = 0.0, dashed: bool = False, label_offset: tuple[float, float] = (0, 0.12),
           size: float = 8) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="<|-|>" if both else "-|>", mutation_scale=11, color=color,
                                 linewidth=1.3, connectionstyle=f"arc3,rad={curve}", shrinkA=2, shrinkB=2,
                                 linestyle=(0, (4, 3)) if dashed else "solid"))
    if label:
        mx, my = (start[0] + end[0]) / 2 + label_offset[0], (start[1] + end[1]) / 2 + label_offset[1]
        ax.text(mx, my, label, ha="center", va="center", fontsize=size, color=color,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"})


def _cores(ax: Any, x: float, y: float, n: int, cols: int, cell: float, color: str) -> None:
    """A grid of ``n`` small squares (SMs / CPU cores), top-left at (x, y)."""
    fill, edge = PALETTE[color]
    for i in range(n):
        r, c = divmod(i, cols)
        ax.add_patch(Rectangle((x + c * cell * 1.25, y - (r + 1) * cell * 1.25), cell, cell, facecolor=edge,
                               edgecolor="none", alpha=0.8))


def _note(ax: Any, x: float, y: float, text: str, *, size: float = 8, color: str = "#5b6270", ha: str = "left",
          style: str = "normal", weight: str = "normal") -> None:
    ax.text(x, y, text, ha=ha, va="center", fontsize=size, color=color, style=style, fontweight=weight,
            linespacing=1.35)


# ---------------------------------------------------------------- the diagrams
MODULES = [  # (folder number, name, hardware, topics, what you measure, colour)
    ("00", "Getting Started", "1 device\n(a CPU is enough)",
     "your machine & the words\nanatomy of a model\nrunning a model\ncompiling a model",
     "matmul & copy ceilings\nparams & bytes, KV cache\nTTFT, TPOT, tokens/s", "blue"),
    ("01", "Leveraging Hardware", "1 × L4\n(24 GB, 121 TFLOP/s bf16)",
     "Llama-3.2-1B on one GPU\nGEMM & the roofline\noptimizing Llama", "TFLOP/s vs roofline\nMFU\nspeed-ups, measured",
     "teal"),
    ("02", "Multi-Accelerator\nDistribution", "4 × L4 in one node\n(PCIe, no NVLink)",
     "a 13B model on 4 GPUs\nparallelism & collectives\nDDP vs FSDP training\nscaling laws",
     "bus bandwidth\nstep time, memory / GPU\nloss vs compute", "orange"),
    ("03", "Multi-Node\nOrchestration", "2 nodes × 4 L4\n(Slurm cluster)",
     "orchestrators & a cluster\nmulti-node training\nnetworking & checkpoints\nan inference server",
     "scaling over the network\ncheckpoint GB/s\nlatency vs concurrency", "purple"),
    ("04", "Cost Optimization", "AWS prices\n(live or snapshot)",
     "capacity & prices\ncost per token & per run\nspot interruption drill",
     "$ per 1M tokens\n$ per training run\nwork lost to spot", "red"),
]


def roadmap() -> Any:
    """The learning path: five modules, each on more hardware than the one before."""
    fig, ax = _canvas(13.2, 6.2, "SMML Lab · the learning path",
                      "Each lab: predict the number (FLOPs, bytes, seconds, dollars) → measure it on your "
                      "hardware → explain the gap")
    col_w, gap, x0, top = 2.36, 0.27, 0.3, 5.2
    for i, (num, name, hw, topics, measure, color) in enumerate(MODULES):
        x = x0 + i * (col_w + gap)
        labs = "\n".join(f"{k} · {t}" for k, t in enumerate(topics.split("\n"), 1))
        _box(ax, x, top - 0.85, col_w, 0.85, f"Module {num}", name, color=color, solid=True, title_size=10.5,
             body_size=9)
        _box(ax, x, top - 1.6, col_w, 0.65, "", hw, color=color, body_size=8.3, valign="center")
        _note(ax, x + 0.08, top - 1.8, "labs", size=7.5, weight="bold")
        _box(ax, x, top - 3.0, col_w, 1.08, "", labs, color="grey", body_size=8.3)
        _note(ax, x + 0.08, top - 3.2, "you measure", size=7.5, weight="bold")
        _box(ax, x, top - 4.2, col_w, 0.88, "", measure, color="grey", body_size=8.3)
        if i < len(MODULES) - 1:
            _arrow(ax, (x + col_w + 0.02, top - 0.42), (x + col_w + gap - 0.02, top - 0.42))
    _box(ax, x0, 0.25, 5 * col_w + 4 * gap, 0.45, "",
         "No GPU? Every lab also runs in smoke mode on a CPU: the offline tiny Llama, gloo instead of NCCL, "
         "CPU telemetry, a bundled price snapshot. Same cells, smaller numbers.", color="green", body_size=8.5,
         valign="center")
    return fig


def cluster() -> Any:
    """Nesting of cluster > node > device > core, on the course's hardware."""
    fig, ax = _canvas(13.2, 7.3, "A cluster, from the outside in",
                      "cluster ⊃ node ⊃ device ⊃ core, as in Module 03: two g6.12xlarge nodes under Slurm")
    _box(ax, 0.3, 0.3, 12.6, 6.1, "", "", color="purple", dashed=True)
    _note(ax, 0.5, 6.18, "CLUSTER · 2 nodes, one scheduler (Slurm), one shared network and storage", size=9,
          color=PALETTE["purple"][1], weight="bold")
    for n, x in enumerate((0.55, 6.85)):
        _box(ax, x, 0.85, 5.8, 5.05, "", "", color="grey")
        _note(ax, x + 0.15, 5.68, f"NODE {n + 1} · g6.12xlarge", size=9, color="#1f2430", weight="bold")
        _note(ax, x + 0.15, 5.43, "48 vCPUs · 192 GiB RAM · 4 × 940 GB NVMe · 40 Gbps network", size=7.8)
        _box(ax, x + 0.2, 4.15, 2.55, 1.05, "", "", color="blue")
        _note(ax, x + 0.3, 5.02, "DEVICE · CPU (host)", size=8, weight="bold", color=PALETTE["blue"][1])
        _cores(ax, x + 0.3, 4.88, 24, 12, 0.13, "blue")
        _note(ax, x + 0.3, 4.3, "24 cores · 48 vCPUs", size=7.5)
        _box(ax, x + 3.0, 4.15, 2.6, 1.05, "host memory", "192 GiB DDR\nevery GPU↔GPU byte\npasses through here",
             color="grey", body_size=7.5, title_size=8.5)
        ax.plot([x + 0.4, x + 5.4], [3.75, 3.75], color=PALETTE["orange"][1], linewidth=3, solid_capstyle="round")
        _note(ax, x + 2.9, 3.95, "PCIe Gen4 x16 per GPU · no NVLink · no GPU peer-to-peer", size=7.5, ha="center",
              color=PALETTE["orange"][1])
        for g in range(4):
            gx = x + 0.2 + g * 1.4
            ax.plot([gx + 0.62, gx + 0.62], [3.75, 3.45], color=PALETTE["orange"][1], linewidth=2)
            _box(ax, gx, 1.05, 1.25, 2.4, "", "", color="teal")
            _note(ax, gx + 0.62, 3.27, f"DEVICE · GPU {g}", size=7.5, ha="center", weight="bold",
                  color=PALETTE["teal"][1])
            _note(ax, gx + 0.62, 3.05, "NVIDIA L4", size=7.5, ha="center")
            _cores(ax, gx + 0.13, 2.85, 58, 8, 0.1, "teal")
            _note(ax, gx + 0.62, 1.6, "58 SMs = cores", size=7, ha="center")
            _note(ax, gx + 0.62, 1.3, "24 GB · 300 GB/s", size=7, ha="center")
    _arrow(ax, (6.35, 2.3), (6.85, 2.3), both=True)
    _note(ax, 6.6, 2.55, "network", size=7.5, ha="center", color=PALETTE["purple"][1])
    _note(ax, 6.6, 0.62, "node ↔ node: 40 Gbps Ethernet (EFA-capable) · storage: S3 / shared file system", size=8,
          ha="center", color=PALETTE["purple"][1])
    return fig


def distributed_environment() -> Any:
    """Who talks to what: jobs and requests, orchestrator, compute nodes, network and storage."""
    fig, ax = _canvas(13.2, 6.6, "A distributed computing environment",
                      "Jobs (batch work) go through an orchestrator; requests (user-facing, low latency) go through "
                      "a server. Both end on the same nodes.")
    _box(ax, 0.3, 4.05, 2.3, 1.2, "ML engineers", "submit jobs:\ntraining, evaluation", color="blue")
    _box(ax, 0.3, 1.75, 2.3, 1.2, "Users & apps", "send requests:\nprompt → completion", color="red")
    _box(ax, 3.4, 4.05, 2.7, 1.2, "Orchestrator",
         "Slurm · Kubernetes · Ray\non a head node: queues jobs,\nallocates nodes, starts processes",
         color="purple", body_size=7.8)
    _box(ax, 3.4, 1.75, 2.7, 1.2, "Inference server", "queue + batcher\nHTTP API, streaming\n(Module 03)",
         color="orange", body_size=7.8)
    _arrow(ax, (2.6, 4.65), (3.4, 4.65), "job")
    _arrow(ax, (2.6, 2.35), (3.4, 2.35), "request")
    _box(ax, 6.9, 1.3, 4.0, 4.4, "", "", color="grey", dashed=True)
    _note(ax, 7.05, 5.5, "compute nodes", size=9, weight="bold", color="#1f2430")
    for n, y in enumerate((3.55, 1.5)):
        _box(ax, 7.1, y, 3.6, 1.7, f"node {n + 1}", "", color="grey", title_size=8.5)
        for g in range(4):
            _box(ax, 7.25 + g * 0.86, y + 0.2, 0.72, 0.95, "", f"GPU\n{g}", color="teal", body_size=7.5,
                 valign="center")
    _arrow(ax, (8.9, 3.55), (8.9, 3.2), both=True)
    _note(ax, 9.0, 3.375, "network (40 Gbps, EFA)", size=7.5, color=PALETTE["purple"][1])
    _arrow(ax, (6.1, 4.65), (6.9, 4.65), "starts ranks", size=7.5)
    _arrow(ax, (6.1, 2.35), (6.9, 2.35), "runs model", size=7.5)
    _box(ax, 11.45, 3.9, 1.5, 1.2, "Object store", "S3: weights,\ndatasets,\ncheckpoints", color="green",
         body_size=7.5, title_size=8.5)
    _box(ax, 11.45, 1.9, 1.5, 1.2, "Shared FS", "NFS / FSx:\ncode, /home,\nlogs", color="green", body_size=7.5,
         title_size=8.5)
    _arrow(ax, (10.9, 4.5), (11.45, 4.5), both=True)
    _arrow(ax, (10.9, 2.5), (11.45, 2.5), both=True)
    _box(ax, 3.4, 0.35, 9.55, 0.55, "", "Telemetry and logs from every node (NVML / DCGM, Slurm accounting) "
         "tell you whether the GPUs are busy; prices tell you what that costs (Module 04).", color="grey",
         body_size=8, valign="center")
    return fig


def training_overview() -> Any:
    """From ``sbatch`` to an all-reduce: job -> orchestrator -> launcher -> ranks -> collectives."""
    fig, ax = _canvas(13.2, 7.0, "How a multi-node training job runs",
                      "Each layer starts the one below it; only the last one does math. Module 03 runs exactly "
                      "this on a 2-node Slurm cluster.")
    rows = [("job", 5.3), ("orchestrator", 4.25), ("launcher", 3.2), ("ranks", 1.95), ("collectives", 0.72)]
    for name, y in rows:
        _note(ax, 0.3, y + 0.38, name.upper(), size=8.5, weight="bold", color="#5b6270")
    _box(ax, 2.0, 5.3, 10.9, 0.78, "sbatch --nodes=2 train.sbatch",
         "\"train this model on 2 nodes × 4 GPUs for N steps\": a script, resources, a time limit", color="blue",
         title_size=9.5, body_size=8)
    _box(ax, 2.0, 4.25, 10.9, 0.78, "Slurm",
         "queues the job, allocates 2 nodes, then runs srun: one launcher task per node", color="purple",
         title_size=9.5, body_size=8)
    for n, x in enumerate((2.0, 7.55)):
        _box(ax, x, 3.2, 5.35, 0.78, f"torchrun on node {n + 1}",
             "--nnodes 2 --nproc-per-node 4 --rdzv-endpoint node1:29500\n"
             "starts 4 ranks; sets RANK, LOCAL_RANK, WORLD_SIZE=8",
             color="orange", title_size=9, body_size=7.5)
        _arrow(ax, (x + 2.67, 4.25), (x + 2.67, 3.98))
        for g in range(4):
            rank = 4 * n + g
            rx = x + g * 1.36
            _box(ax, rx, 1.95, 1.27, 0.95, f"rank {rank}", f"LOCAL_RANK {g}\ncuda:{g} · fwd + bwd",
                 color="teal", title_size=8.5, body_size=7.2)
            _arrow(ax, (rx + 0.63, 3.2), (rx + 0.63, 2.9))
    _arrow(ax, (7.45, 5.3), (7.45, 5.03))
    centers = [2.0 + g * 1.36 + 0.63 for g in range(4)] + [7.55 + g * 1.36 + 0.63 for g in range(4)]
    for a, b in zip(centers, centers[1:]):
        _arrow(ax, (a + 0.2, 1.6), (b - 0.2, 1.6), color=PALETTE["teal"][1])
    _arrow(ax, (centers[-1], 1.5), (centers[0], 1.5), color=PALETTE["teal"][1], curve=-0.12)
    _note(ax, 7.45, 0.62, "all-reduce of the gradients (DDP) · all-gather + reduce-scatter of shards (FSDP)\n"
          "through NCCL: inside a node over PCIe and host memory, between nodes over the network",
          size=8, ha="center", color=PALETTE["teal"][1])
    return fig


def inference_overview() -> Any:
    """One request through a server: queue, prefill, decode steps; where TTFT and TPOT come from."""
    fig, ax = _canvas(13.2, 5.6, "How an inference request is served",
                      "Prefill reads the whole prompt in one forward pass; decode then adds one token per forward "
                      "pass, reusing the KV cache.")
    _box(ax, 0.3, 3.35, 2.2, 1.1, "client", "POST /v1/completions\nprompt, max_tokens", color="red", body_size=7.8)
    _box(ax, 3.1, 3.35, 3.0, 1.1, "server", "queue → batcher: joins requests\ninto one batch per step",
         color="orange", body_size=7.8)
    _box(ax, 6.7, 3.35, 3.2, 1.1, "model on the GPU", "weights + KV cache\n(one entry per token per layer)",
         color="teal", body_size=7.8)
    _box(ax, 10.5, 3.35, 2.4, 1.1, "response", "tokens streamed\nas they are made", color="red", body_size=7.8)
    for a, b in ((2.5, 3.1), (6.1, 6.7), (9.9, 10.5)):
        _arrow(ax, (a, 3.9), (b, 3.9))
    y, t0 = 1.55, 1.2
    segments = [("queue", 1.0, "grey"), ("prefill", 2.2, "orange")] + [(f"d{i}", 0.95, "teal") for i in range(1, 8)]
    x = t0
    token_x = []
    for label, w, color in segments:
        _box(ax, x, y, w - 0.06, 0.6, "", label if not label.startswith("d") else "decode", color=color,
             body_size=7.5, valign="center")
        x += w
        if label != "queue":
            token_x.append(x - 0.06)
    for i, tx in enumerate(token_x):
        ax.plot([tx, tx], [y + 0.6, y + 0.85], color=PALETTE["red"][1], linewidth=1.2)
        _note(ax, tx, y + 0.97, f"tok {i + 1}", size=6.8, ha="center", color=PALETTE["red"][1])
    _note(ax, t0 - 0.1, y + 0.3, "one\nrequest", size=7.5, ha="right")
    _arrow(ax, (x + 0.1, y + 0.3), (x + 0.9, y + 0.3), "time", label_offset=(0, 0.2), size=7.5)
    _arrow(ax, (t0, 1.1), (token_x[0], 1.1), both=True, color=PALETTE["red"][1])
    _note(ax, (t0 + token_x[0]) / 2, 0.85, "TTFT: arrival → first token (queue + prefill)", size=8, ha="center",
          color=PALETTE["red"][1])
    _arrow(ax, (token_x[3], 1.1), (token_x[4], 1.1), both=True, color=PALETTE["teal"][1])
    _note(ax, (token_x[3] + token_x[4]) / 2, 0.85, "TPOT: one decode step", size=8, ha="center",
          color=PALETTE["teal"][1])
    _note(ax, 6.4, 0.38, "prefill is compute-bound (many tokens per weight read); decode is memory-bound "
          "(all weights read for one token per sequence), so batching many requests makes decode cheaper per token",
          size=7.8, ha="center")
    return fig


DIAGRAMS: dict[str, Callable[[], Any]] = {
    "roadmap": roadmap, "cluster": cluster, "distributed_environment": distributed_environment,
    "training_overview": training_overview, "inference_overview": inference_overview,
}
