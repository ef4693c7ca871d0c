"""Collective bus bandwidth over all GPUs, and single-GPU training throughput and MFU of the training worker.

On a GPU machine these are the Module 02 reference figures (``--save-reference`` writes them to
``assets/reference_results/`` as ``m02_collectives.json`` and ``m02_training_throughput.json`` to commit).
On a CPU the same runs happen at smoke sizes with gloo: useful to see the machinery work, not as figures
(no datasheet peak, so no MFU).

    smml bench distributed [--max-bytes 1G] [--steps 20] [--save-reference]
"""

from __future__ import annotations

import argparse
import json

import torch

from smml_lib.common.paths import reference_dir
from smml_lib.distributed import analysis, collectives
from smml_lib.distributed.launcher import default_nproc, launch
from smml_lib.perf.results import save_result


def main(argv: list[str]) -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="smml bench distributed", description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=None)
    p.add_argument("--max-bytes", default="1G" if gpu else "16M")
    p.add_argument("--steps", type=int, default=20 if gpu else 4)
    p.add_argument("--save-reference", action="store_true", help="write the results as committed reference results")
    args = p.parse_args(argv)
    nproc = args.nproc or default_nproc()

    coll = launch("collectives", ["--max-bytes", args.max_bytes, "--iters", "20" if gpu else "5"], nproc=nproc,
                  echo=False, timeout_s=1800)
    bw = collectives.summarize(coll)
    print(f"collectives: {nproc} x {bw['device_name'].iloc[0]} ({bw['backend'].iloc[0]})")
    for op, part in bw.groupby("op"):
        big = part.iloc[-1]
        print(f"  {op:<15} busbw {big['busbw_gbps']:8.2f} GB/s at {big['size_bytes'] / 2**20:8.1f} MiB; "
              f"peak {part['busbw_gbps'].max():8.2f} GB/s  (no target: reference figure)")

    train_args = (["--model", "preset:Llama-3.2-1B", "--layers", "8", "--precision", "bf16", "--seq-len", "1024",
                   "--global-batch", "8", "--micro-batch", "2", "--warmup-steps", "3"] if gpu else
                  ["--model", "tiny", "--seq-len", "64", "--global-batch", "8"])
    df = launch("train", train_args + ["--strategy", "single", "--max-steps", str(args.steps)], nproc=1,
                echo=False, timeout_s=1800)
    s = analysis.summarize_training(df)
    r = s.iloc[0]
    mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] == r["mfu"] and r["mfu"] is not None else "n/a (no datasheet peak)"
    print(f"training, 1 process on {r['device_name']}: {r['model']} ({r['params'] / 1e6:.0f} M params), "
          f"{r['tokens_per_s']:,.0f} tokens/s, step {r['step_time_s'] * 1e3:.1f} ms, MFU {mfu}, "
          f"peak memory {r['peak_memory_gb']:.2f} GB ({r['memory_method']})")
    if args.save_reference:
        if not gpu:
            print("--save-reference: refused on a CPU (reference results are GPU measurements)")
            return 1
        for name, frame in (("m02_collectives", bw), ("m02_training_throughput", s)):
            path = save_result(name, frame, mode="real", source="smml bench distributed")
            (reference_dir() / f"{name}.json").write_text(json.dumps(json.loads(path.read_text()), indent=1))
            print(f"reference written: {reference_dir() / (name + '.json')}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
