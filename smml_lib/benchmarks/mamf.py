"""Maximum achievable matmul: best TFLOP/s found within a time budget, as % of the dense datasheet peak.

Target (issue 3): on an H100/H200 the bf16 search reaches at least 75% of the dense datasheet peak
(989 TFLOP/s) in under 60 s. For comparison, stas00's mamf-finder reports 794.5 TFLOP/s (80.3%) on
H100 SXM after a search of about 30 minutes. On other devices the figure is printed without a target;
on a CPU there is no datasheet peak, only the figure.

    smml bench mamf [--dtype bf16] [--budget 50] [--lo 2048 --hi 16384 --align 256]
"""

from __future__ import annotations

import argparse
import sys

import torch

from smml_lib.perf.mamf import max_achievable_matmul

TARGET_PCT = 75.0
TARGET_S = 60.0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml bench mamf", description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default=None, help="fp32 | tf32 | bf16 | fp16 | fp8 (default bf16 on GPU, fp32 on CPU)")
    p.add_argument("--budget", type=float, default=None, help="search time budget in s (default 50 GPU, 6 CPU)")
    p.add_argument("--lo", type=int, default=None)
    p.add_argument("--hi", type=int, default=None)
    p.add_argument("--align", type=int, default=None)
    p.add_argument("--top", type=int, default=8, help="print this many best shapes")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: its own choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    res = max_achievable_matmul(dtype=args.dtype, time_budget_s=args.budget, lo=args.lo, hi=args.hi,
                                align=args.align, progress=False)
    trials = res.trials[res.trials.phase != "confirm"].sort_values("tflops", ascending=False)
    print(f"device {res.device_name}, dtype {res.dtype}: {len(trials)} shapes in {res.elapsed_s:.1f} s")
    print(trials.head(args.top)[["phase", "m", "n", "k", "tflops", "spread"]].to_string(index=False))
    print(f"best (confirmed median): {res.best_tflops:.2f} TFLOP/s at M x N x K = {res.best_shape.name}")
    if res.peak_tflops is None:
        print("no datasheet peak for this device/dtype: no % of peak, no target")
        return 0
    pct = res.pct_of_peak
    print(f"{pct:.1f}% of the dense datasheet peak ({res.peak_tflops:g} TFLOP/s)")
    if any(g in res.device_name for g in ("H100", "H200")) and res.dtype == "bf16":
        ok = pct >= TARGET_PCT and res.elapsed_s < TARGET_S
        print(f"target: >= {TARGET_PCT:.0f}% in < {TARGET_S:.0f} s -> {'PASS' if ok else 'MISS'}")
    else:
        print("(the issue's target applies to bf16 on H100/H200; this run is a figure without a target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
