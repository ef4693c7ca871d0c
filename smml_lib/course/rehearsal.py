"""``smml rehearse``: every lab's real-mode branch, end to end, on a CPU machine, before a learner meets it.

Real mode runs real architectures on GPUs; nobody should find its errors for the first time on a rented
g6.12xlarge. A rehearsal runs each lab with ``mode=real`` on this machine, through the plain runner
(``smml plainrun``, one process per lab), with:

- **real architectures**: random-weight twins (``smml tiny --twin``) of Llama-3.2-1B (its full
  published shape) and of Llama-2-13B shrunk by layer count only (``REHEARSAL_13B_LAYERS``);
- **small sizes**: only parameters of each lab's parameters cell change (``REHEARSAL_PARAMS``), so the
  rehearsal takes exactly the code path a learner takes, at sizes a 2-core CPU finishes in minutes.

Checks that only hold on a GPU's physics are declared by each lab (``lab.check(..., needs_gpu=...)``);
here they are listed as "needs a GPU", unjudged. Every other check runs. The summary (one row per lab:
status, seconds, the unjudged checks) is printed and written to ``<out>/rehearsal.md``.

    smml rehearse                       # every lab (Module 03's cluster labs wait for the cluster lock)
    smml rehearse --labs 00-2 01-3      # some labs, by number
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smml_lib.common.paths import cache_dir, repo_root
from smml_lib.course.runner import discover_notebooks, lab_number
from smml_lib.models.tiny import build_twin

REHEARSAL_13B_LAYERS = 2
# One local Slurm cluster per machine: Module 03's labs 01-03 take turns. Not the cluster's own start/stop lock
# (``<state dir>.lock``): the lab would wait forever for the lock its own ``flock`` parent holds.
CLUSTER_LOCK = "/tmp/smml-rehearsal-cluster.lock"
TWIN_1B, TWIN_13B = "{twin_1b}", "{twin_13b}"  # replaced by the twins' folders

# Per lab: the parameters a rehearsal changes (sizes only; mode=real is added to every lab).
REHEARSAL_PARAMS: dict[str, dict[str, Any]] = {
    "00-1": dict(matmul_size=512, copy_mib=64),
    "00-2": dict(model_id=TWIN_1B, kv_tokens=32),
    "00-3": dict(model_id=TWIN_1B, new_tokens=4, matmul_size=256, copy_mib=64, prefill_lengths=[8, 16, 64],
                 decode_batches=[1, 4], cache_prompt_tokens=16),
    "00-4": dict(model_id=TWIN_1B, chain_mi_elements=4, forward_tokens=16),
    "01-1": dict(model_id=TWIN_1B, context_len=64, batch=2, prompt_tokens=16, new_tokens=4, n_prefill=2),
    "01-2": dict(gemm_target_s=0.02, matmul_size=256, copy_mib=32, square_sizes=[32, 64, 128, 256],
                 layer_tokens=[1, 16], dtype_size=128, wave_range=[240, 265, 8], mamf_budget_s=3.0),
    "01-3": dict(model_id=TWIN_1B, prompt_tokens=8, new_tokens=4, batch_sizes=[1, 4], repeats=1,
                 matmul_size=256, copy_mib=64),
    "02-1": dict(big_model_id=TWIN_13B, small_model_id=TWIN_1B, num_gpus=2, new_tokens=4, gpu_budget="2GiB",
                 matmul_size=256, copy_mib=64, tp_layers=1, tp_seq_len=16, tp_iters=2),
    "02-2": dict(nproc=2, coll_max_bytes="16M", coll_iters=3, coll_warmup=1, ddp_layers=1, ddp_seq_len=32,
                 ddp_max_steps=5),
    "02-3": dict(layers=1, seq_len=32, global_batch=4, micro_batch=2, max_steps=5, max_gpus=2),
    "02-4": dict(),
    "03-1": dict(gpus_per_node=1),
    "03-2": dict(gpus_per_node=1, train_layers=1, train_seq_len=32, train_global_batch=4, steps=4),
    "03-3": dict(gpus_per_node=1, train_layers=1, train_seq_len=32, train_global_batch=4, sweep_max_bytes="4M",
                 sweep_iters=4),
    "03-4": dict(model_id=TWIN_1B, max_batch=2, user_levels=[1, 2], answer_range=[2, 4], level_s=30.0, per_user=1,
                 request_timeout_s=600.0, scaling_new_tokens=4),
    "04-1": dict(prices="snapshot"),
    "04-2": dict(prices="snapshot", idle_model_id=TWIN_1B, idle_requests=2, idle_new_tokens=4, idle_gap_s=0.3),
    "04-3": dict(drill_layers=1, drill_seq_len=32, drill_global_batch=2, drill_max_steps=8,
                 drill_checkpoint_every=3, drill_interrupt_after_step=5),
}
CLUSTER_LABS = ("03-1", "03-2", "03-3")


@dataclass
class Rehearsal:
    """One lab's rehearsal: passed / failed, seconds, checks unjudged for want of a GPU, and the log."""

    lab: str
    notebook: str
    status: str
    seconds: float
    needs_gpu: list[str] = field(default_factory=list)
    summary: str = ""
    error: str = ""
    log: str = ""


def twins(root: Path | None = None) -> dict[str, Path]:
    """The rehearsal's twins (built once, then cached): Llama-3.2-1B whole, Llama-2-13B with 2 layers."""
    root = Path(root or cache_dir("rehearsal"))
    want = {TWIN_1B: ("Llama-3.2-1B", None, root / "twin-llama-3.2-1b"),
            TWIN_13B: ("Llama-2-13b", {"num_hidden_layers": REHEARSAL_13B_LAYERS},
                       root / f"twin-llama-2-13b-{REHEARSAL_13B_LAYERS}-layers")}
    for preset, overrides, dest in want.values():
        if not (dest / "model.safetensors").exists() and not (dest / "model.safetensors.index.json").exists():
            print(f"building the {preset} twin into {dest} (once; about a minute)", flush=True)
            build_twin(preset, dest, overrides=overrides)
    return {key: dest for key, (_, _, dest) in want.items()}


def lab_params(lab: str, twin_dirs: dict[str, Path]) -> dict[str, Any]:
    """``mode=real`` and the lab's rehearsal sizes, with the twins' folders filled in."""
    params = {"mode": "real"}
    for k, v in REHEARSAL_PARAMS[lab].items():
        params[k] = str(twin_dirs[v]) if isinstance(v, str) and v in twin_dirs else v
    return params


def parse_check_output(text: str) -> tuple[str, list[str]]:
    """The lab check's summary line and the names of the checks it left for a GPU (from the printed check)."""
    summary = next((ln for ln in text.splitlines() if re.search(r"checks passed in [\d.]+ s", ln)), "")
    unjudged = [m.group(1) for m in re.finditer(r"^- (.+?)  \(needs a GPU: not judged here\)$", text, re.M)]
    return summary, unjudged


def rehearse_lab(notebook: Path, twin_dirs: dict[str, Path], out: Path, timeout_s: int = 3600) -> Rehearsal:
    """Run one lab in real mode as a plain-Python subprocess; its output goes to ``out/<lab>.log``."""
    lab = lab_number(notebook)
    cmd = [sys.executable, "-m", "smml_lib.course.plainrun", str(notebook)]
    cmd += [a for k, v in lab_params(lab, twin_dirs).items() for a in ("-p", f"{k}={_param_text(v)}")]
    if lab in CLUSTER_LABS:
        cmd = ["flock", CLUSTER_LOCK, *cmd]
    log = out / f"{lab}.log"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=repo_root(), capture_output=True, text=True, timeout=timeout_s)
        text, ok = proc.stdout + proc.stderr, proc.returncode == 0
    except subprocess.TimeoutExpired as exc:
        text, ok = f"{exc.stdout or ''}{exc.stderr or ''}\nTIMEOUT after {timeout_s} s", False
    seconds = time.perf_counter() - t0
    log.write_text(text)
    summary, unjudged = parse_check_output(text)
    failed = [ln for ln in text.splitlines() if ln.startswith(("FAILED", "LabCheckError", "TIMEOUT"))]
    return Rehearsal(lab, notebook.relative_to(repo_root()).as_posix(), "passed" if ok else "failed", seconds,
                     unjudged, summary, "" if ok else (failed[-1] if failed else text.strip()[-300:]), str(log))


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def report_markdown(runs: list[Rehearsal]) -> str:
    """The rehearsal as a Markdown table: lab, status, seconds, the checks left for a GPU."""
    lines = ["| lab | status | seconds | needs a GPU (unjudged) |", "|---|---|---:|---|"]
    for r in runs:
        lines.append(f"| {r.lab} | {r.status}{': ' + r.error if r.error else ''} | {r.seconds:.0f} | "
                     f"{'; '.join(r.needs_gpu) or '-'} |")
    total = sum(r.seconds for r in runs)
    passed = sum(r.status == "passed" for r in runs)
    return "\n".join([*lines, "", f"{passed}/{len(runs)} labs passed in {total:.0f} s ({total / 60:.1f} min)"])


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml rehearse", description=__doc__.splitlines()[0])
    p.add_argument("--labs", nargs="*", help="lab numbers, e.g. 00-2 01-3 (default: every rehearsed lab)")
    p.add_argument("--out", type=Path, default=Path("rehearsal"), help="folder for the logs and rehearsal.md")
    p.add_argument("--timeout-s", type=int, default=3600, help="per lab")
    p.add_argument("--twins", type=Path, help="folder of the twins (built there when missing; default: the cache)")
    args = p.parse_args(argv)
    notebooks = {lab_number(nb): nb for nb in discover_notebooks(include_solutions=False)}
    chosen = args.labs or [lab for lab in notebooks if lab in REHEARSAL_PARAMS]
    unknown = [lab for lab in chosen if lab not in REHEARSAL_PARAMS]
    if unknown:
        print(f"smml rehearse: no rehearsal for {unknown} (known: {', '.join(REHEARSAL_PARAMS)})", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    twin_dirs = twins(args.twins)
    runs = []
    for lab in chosen:
        r = rehearse_lab(notebooks[lab], twin_dirs, args.out, args.timeout_s)
        print(f"{r.status.upper():6} {lab} in {r.seconds:.0f} s; needs a GPU: {r.needs_gpu or '-'} {r.error}",
              flush=True)
        runs.append(r)
        (args.out / "rehearsal.md").write_text(report_markdown(runs) + "\n")
    print(report_markdown(runs))
    return 0 if all(r.status == "passed" for r in runs) else 1
