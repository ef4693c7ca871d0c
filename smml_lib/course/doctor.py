"""``smml doctor``: everything a learner or instructor must know about a machine before a workshop.

One table, one line per check, each with a verdict (``ok`` / ``warn`` / ``missing``) and the fix.
Run it on every machine the day before; the main job's report includes it as pre-flight evidence.
Secrets are reported by presence and source only, never by value.

    smml doctor          # table
    smml doctor --json   # machine-readable
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import torch

from smml_lib.common import credentials
from smml_lib.common.display import in_notebook, show_frame
from smml_lib.course.jupyter_kernel import KERNEL_NAME, kernel_python
from smml_lib.perf import nvml
from smml_lib.perf.hardware import peer_access_matrix

COURSE_GPUS = 4  # g6.12xlarge: 4 x L4
DISK_OK_GB = 60  # Llama-2-13B (26 GB) + Llama-3.2-1B (2.5 GB) + checkpoints and runs


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _row(check: str, value: Any, verdict: str, fix: str = "") -> dict[str, str]:
    return {"check": check, "value": str(value), "verdict": verdict, "fix": fix}


def _software_rows() -> list[dict[str, str]]:
    rows = [_row("python", platform.python_version(), "ok" if sys.version_info >= (3, 10) else "missing",
                 "" if sys.version_info >= (3, 10) else "install Python 3.10 or newer")]
    for dist, why in (("torch", "everything"), ("transformers", "models"), ("accelerate", "Module 02 big model"),
                      ("papermill", "the main job"), ("jupyterlab", "opening the labs"), ("boto3", "Module 04 prices")):
        v = _version(dist)
        rows.append(_row(dist, v or "not installed", "ok" if v else "missing",
                         "" if v else "bash scripts/course.sh setup (installs smml_lib with all extras)"))
    return rows


def _gpu_rows() -> list[dict[str, str]]:
    rows = []
    cuda_ok = torch.cuda.is_available()
    build = f"torch built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only torch build"
    rows.append(_row("CUDA", f"available ({build})" if cuda_ok else f"not available ({build})",
                     "ok" if cuda_ok else "warn",
                     "" if cuda_ok else "labs run in smoke mode (CPU, tiny model); for real mode use a GPU machine "
                                        "with the NVIDIA driver and a CUDA build of torch"))
    if cuda_ok:
        n = torch.cuda.device_count()
        names = [f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.1f} GiB)"
                 for i in range(n)]
        rows.append(_row("GPUs", f"{n}: " + "; ".join(names), "ok" if n >= COURSE_GPUS else "warn",
                         "" if n >= COURSE_GPUS else f"Module 02 is written for {COURSE_GPUS} GPUs (g6.12xlarge); "
                                                     f"with {n} the multi-GPU labs use {n}"))
        try:
            nccl = ".".join(map(str, torch.cuda.nccl.version()))
            rows.append(_row("NCCL", nccl, "ok"))
        except Exception as exc:
            rows.append(_row("NCCL", f"unavailable ({type(exc).__name__})", "warn", "multi-GPU labs need NCCL"))

        m = peer_access_matrix()
        off = [(i, j) for i in range(n) for j in range(n) if i != j]
        p2p = sum(bool(m.iloc[i, j]) for i, j in off)
        desc = "single GPU" if n < 2 else f"{p2p}/{len(off)} GPU pairs have peer access" + (
            " (PCIe without P2P, as on g6.12xlarge: NCCL goes through host memory)" if p2p == 0 else "")
        rows.append(_row("GPU peer access", desc, "ok"))
    else:
        rows.append(_row("GPUs", "none", "warn", "smoke mode only"))
        rows.append(_row("NCCL", "n/a (gloo is used on the CPU)", "warn", "needs CUDA GPUs"))
        rows.append(_row("GPU peer access", "n/a", "ok"))
    drv = nvml.driver_version()
    rows.append(_row("NVIDIA driver", drv or "none", "ok" if drv else "warn", "" if drv else nvml.reason()))
    rows.append(_row("NVML telemetry", "available" if nvml.available() else f"unavailable: {nvml.reason()}",
                     "ok" if nvml.available() else "warn",
                     "" if nvml.available() else "telemetry falls back to CPU%/RSS sampling"))
    return rows


def _account_rows() -> list[dict[str, str]]:
    hf = credentials.hf_token_source()
    aws = credentials.aws_credentials_source()
    return [
        _row("Hugging Face token", f"configured ({hf}; value hidden)" if hf else "not configured",
             "ok" if hf else "warn",
             "" if hf else "real mode downloads gated meta-llama models: accept the license on huggingface.co, then "
                           "`hf auth login` or export HF_TOKEN=...; or use local checkpoint folders"),
        _row("AWS credentials", f"configured ({aws}; values hidden)" if aws else "not configured",
             "ok" if aws else "warn",
             "" if aws else "Module 04 uses the bundled price snapshot; for live prices configure credentials "
                            "(aws configure) with pricing:GetProducts and ec2:Describe* permissions"),
    ]


def _machine_rows() -> list[dict[str, str]]:
    rows = [_row("CPU", f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM", "ok")]
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    probe = hf_home if hf_home.exists() else Path.home()
    free = shutil.disk_usage(probe).free / 1e9
    rows.append(_row("free disk", f"{free:.0f} GB at {probe}", "ok" if free >= DISK_OK_GB else "warn",
                     "" if free >= DISK_OK_GB else f"real mode downloads ~30 GB of weights; free {DISK_OK_GB} GB or "
                                                   "point HF_HOME at a larger volume (e.g. the instance NVMe)"))
    try:
        py = kernel_python()
        same = Path(py).resolve() == Path(sys.executable).resolve()
        rows.append(_row(f"Jupyter kernel '{KERNEL_NAME}'", py, "ok" if same else "warn",
                         "" if same else "smml kernel  (re-register it for this environment)"))
    except Exception:
        rows.append(_row("Jupyter kernel 'smml'", "not registered", "missing", "smml kernel"))
    slurm = shutil.which("sbatch")
    daemons = shutil.which("slurmctld") and shutil.which("munged")
    rows.append(_row("Slurm", f"sbatch at {slurm}" if slurm else "not installed",
                     "ok" if slurm and daemons else "warn",
                     "" if slurm and daemons else "Module 03's local cluster needs root and "
                                                 "`apt-get install slurmctld slurmd slurm-client munge`"))
    return rows


def run_doctor() -> "Any":
    """Run every check; returns a DataFrame with columns check, value, verdict, fix."""
    rows = _software_rows() + _gpu_rows() + _account_rows() + _machine_rows()
    df = pd.DataFrame(rows)
    df["value"] = df["value"].map(credentials.redact)
    return df


def doctor(show: bool = True) -> "Any":
    """Notebook entry point: run the checks, display the table (verdicts coloured), return the DataFrame."""
    df = run_doctor()
    if show:
        if in_notebook():
            from IPython.display import display  # deferred: only inside Jupyter

            colours = {"ok": "color:#11772b", "warn": "color:#a06000", "missing": "color:#b00020;font-weight:600"}
            display(df.style.hide(axis="index").map(lambda v: colours.get(v, ""), subset=["verdict"]))
        else:
            show_frame(df)
    return df


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml doctor", description="Check this machine before a workshop.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    df = run_doctor()
    if args.json:
        print(df.to_json(orient="records", indent=1))
    else:
        widths = {c: min(60, max(len(c), *(len(v) for v in df[c]))) for c in ("check", "value", "verdict")}
        print("  ".join(c.ljust(w) for c, w in widths.items()) + "  fix")
        for r in df.itertuples():
            cells = [str(getattr(r, c))[:w].ljust(w) for c, w in widths.items()]
            print("  ".join(cells) + "  " + r.fix)
        counts = df["verdict"].value_counts().to_dict()
        print(f"\n{counts.get('ok', 0)} ok, {counts.get('warn', 0)} warn, {counts.get('missing', 0)} missing")
    return 1 if (df["verdict"] == "missing").any() else 0
