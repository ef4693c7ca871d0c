"""Llama decode ladder at batch 1: best rung vs the naive fp32 no-cache baseline, and % of the bandwidth bound.

Targets (issue 3, Llama-3.2-1B on a GPU): the best rung (static KV cache + torch.compile with CUDA
graphs, bf16) reaches at least 60% of the memory-bandwidth bound (weight bytes per token / measured
copy bandwidth) and at least 4x the decode tokens/s of the naive rung (fp32, eager attention, no KV cache).
On a CPU the tiny model runs instead and the figures are printed without a target.

    smml bench decode_ladder [--model meta-llama/Llama-3.2-1B] [--prompt-tokens 128] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
import torch

from smml_lib.common.device import default_device
from smml_lib.models import ladder
from smml_lib.perf.ceilings import measure_ceilings

TARGET_RATIO = 4.0
TARGET_PCT = 60.0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml bench decode_ladder", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: meta-llama/Llama-3.2-1B on a GPU, tiny on a CPU")
    p.add_argument("--prompt-tokens", type=int, default=None)
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: its own choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    gpu = torch.cuda.is_available()
    dev = default_device()
    model_id = args.model or ("meta-llama/Llama-3.2-1B" if gpu else "tiny")
    prompt = args.prompt_tokens or (128 if gpu else 16)
    new = args.new_tokens or (64 if gpu else 16)
    fast = "bf16" if not gpu or torch.cuda.is_bf16_supported() else "fp16"
    ceil = {d: measure_ceilings(dev, dtype=d, matmul_size=None if gpu else 256) for d in ("fp32", fast)}
    copy_gbps = ceil[fast].copy_gbps
    df = ladder.run_ladder(model_id, ladder.default_rungs(fast), prompt_tokens=prompt, new_tokens=new,
                           copy_gbps=copy_gbps, matmul_tflops={d: c.matmul_tflops for d, c in ceil.items()},
                           repeats=args.repeats, device=dev, compile_scope="step", progress=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(df[["rung", "tpot_s", "predicted_tpot_s", "decode_tokens_per_s", "speedup_vs_naive",
                  "pct_of_bandwidth_bound", "first_call_s"]].to_string(index=False))
    best = df.loc[df["decode_tokens_per_s"].idxmax()]
    ratio, pct = best["speedup_vs_naive"], best["pct_of_bandwidth_bound"]
    print(f"{model_id} on {df['device_name'].iloc[0]}, prompt {prompt} tokens, {new} new tokens, batch 1; "
          f"measured copy bandwidth {copy_gbps:.1f} GB/s")
    print(f"best rung {best['rung']!r}: {best['decode_tokens_per_s']:.1f} tokens/s = {ratio:.2f}x the naive baseline, "
          f"{pct:.1f}% of the bandwidth bound ({1e3 * best['bandwidth_bound_tpot_s']:.3f} ms per token)")
    if gpu and "llama-3.2-1b" in str(model_id).lower():  # the hub id, a local folder or its architecture twin
        print(f"targets: >= {TARGET_RATIO:g}x -> {'PASS' if ratio >= TARGET_RATIO else 'MISS'}; "
              f">= {TARGET_PCT:g}% of bound -> {'PASS' if pct >= TARGET_PCT else 'MISS'}")
    else:
        print("(the targets apply to Llama-3.2-1B on a GPU; this run prints figures without a target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
