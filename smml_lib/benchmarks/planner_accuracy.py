"""Memory planner vs measured training memory per process (target: within 15 %), for single, DDP and FSDP.

Measured: ``torch.cuda.max_memory_allocated`` on GPUs (compared with the planner's peak estimate); on a CPU
the training worker counts the tensors themselves (parameters, gradients, Adam states, saved activations;
compared with the planner's tensor total). Each case is a real training-worker run (``launch("train")``)
through the launcher.

    smml bench planner_accuracy            # smoke sizes on a CPU, Llama-3.2-1B (8 layers) shapes on GPUs
    smml bench planner_accuracy --quick    # one process only (no DDP/FSDP launch)
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from smml_lib.distributed import analysis
from smml_lib.distributed.launcher import default_nproc, launch

TARGET_PCT = 15.0


def cases(gpu: bool, nproc: int, quick: bool) -> list[tuple[list[str], int]]:
    base = (["--model", "preset:Llama-3.2-1B", "--layers", "8", "--precision", "bf16", "--seq-len", "1024",
             "--global-batch", str(2 * nproc), "--micro-batch", "2", "--max-steps", "4"] if gpu else
            ["--model", "tiny", "--seq-len", "64", "--global-batch", "4", "--max-steps", "2"])
    out = [(base + ["--strategy", "single", "--global-batch", "2" if gpu else "4"], 1),
           (base + ["--strategy", "single", "--activation-checkpointing", "--global-batch", "2" if gpu else "4"], 1)]
    if not quick and nproc > 1:
        out += [(base + ["--strategy", "ddp,fsdp"], nproc),
                (base + ["--strategy", "fsdp", "--no-reshard-after-forward"], nproc)]
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml bench planner_accuracy", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="single-process cases only")
    p.add_argument("--nproc", type=int, default=None)
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    nproc = args.nproc or default_nproc()
    rows = []
    for worker_args, n in cases(gpu, nproc, args.quick):
        df = launch("train", worker_args, nproc=n, echo=False, timeout_s=1800)
        model = worker_args[worker_args.index("--model") + 1]
        layers = int(worker_args[worker_args.index("--layers") + 1]) if "--layers" in worker_args else None
        summary = analysis.with_memory_prediction(analysis.summarize_training(df), analysis.model_config(model, layers))
        summary["activation_checkpointing"] = "--activation-checkpointing" in worker_args
        rows.append(summary)
    out = pd.concat(rows, ignore_index=True)
    print(f"device: {out['device_name'].iloc[0]}; measured: {out['memory_method'].iloc[0]}")
    for _, r in out.iterrows():
        ok = abs(r["error_pct"]) <= TARGET_PCT
        label = r["run"] + (" +AC" if r["activation_checkpointing"] else "")
        print(f"{label:<24} predicted {r['predicted_gb'] * 1e3:10.1f} MB  "
              f"measured {r['peak_memory_gb'] * 1e3:10.1f} MB  "
              f"error {r['error_pct']:+6.2f} %  (target within {TARGET_PCT:.0f} %)  {'PASS' if ok else 'MISS'}")
    worst = out["error_pct"].abs().max()
    print(f"worst error {worst:.2f} % -> {'PASS' if worst <= TARGET_PCT else 'MISS'}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
