"""Serving throughput: continuous batching vs batch-size-1 at concurrency 16, with p99 TTFT for both.

Target (issue 5): continuous batching delivers at least 3x the output tokens/s of one-request-at-a-time
serving at concurrency 16, tiny model on the CPU. Static batching (same batch size) is shown for context.

One real server subprocess on 127.0.0.1 serves the tiny Llama under one name per configuration; the load
generator in this process plays 16 closed-loop streaming users with fixed-length answers. Configurations
alternate over ``--rounds`` rounds so that a slow moment of a shared machine does not hit one side only;
the median round is reported.

    smml bench serving_batching [--rounds 3] [--requests 64] [--max-tokens 32] [--model tiny]
"""

from __future__ import annotations

import argparse

import pandas as pd

from smml_lib.common.device import cpu_name, device_name
from smml_lib.serving import loadgen
from smml_lib.serving.process import start_server

TARGET_RATIO = 3.0
CONFIGS = {"batch size 1": ("static", 1), "static batching": ("static", 16), "continuous batching": ("continuous", 16)}


def measure(model: str = "tiny", *, concurrency: int = 16, requests: int = 64, max_tokens: int = 32, rounds: int = 3,
            time_limit_s: float = 120.0, configs: dict[str, tuple[str, int]] | None = None) -> "tuple[object, object]":
    """Run every configuration ``rounds`` times; returns (per-round summary, median per configuration).

    One server subprocess serves the weights under one name per configuration (``variants``), so every
    configuration runs in the same process on the same weights; only the one being measured is busy.
    """
    configs = configs or CONFIGS
    variants = {label: {"scheduler": sched, "max_batch": batch} for label, (sched, batch) in configs.items()}
    rows = []
    with start_server(model, variants=variants, max_queue=4 * concurrency, max_wait_ms=20) as server:
        for r in range(rounds):
            labels = list(configs) if r % 2 == 0 else list(configs)[::-1]
            for label in labels:
                df = loadgen.sweep(server.base_url, label, [concurrency], requests_per_level=requests,
                                   max_tokens=max_tokens, ignore_eos=True, label=label, time_limit_s=time_limit_s)
                summary = loadgen.summarize(df)
                summary["round"] = r
                rows.append(summary)
    per_round = pd.concat(rows, ignore_index=True)
    median = per_round.groupby("label", sort=False).median(numeric_only=True).reset_index()
    return per_round, median


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml bench serving_batching", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=64, help="requests per configuration and round")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    print(f"machine: {device_name()} / {cpu_name()}; model {args.model}; concurrency {args.concurrency}; "
          f"{args.requests} requests x {args.max_tokens} tokens per configuration; {args.rounds} rounds")
    _, med = measure(args.model, concurrency=args.concurrency, requests=args.requests, max_tokens=args.max_tokens,
                     rounds=args.rounds)
    print(f"\n{'configuration':<22}{'tokens/s':>10}{'req/s':>8}{'TTFT p50':>11}{'TTFT p99':>11}{'TPOT p50':>11}"
          f"{'e2e p99':>10}{'ok':>5}")
    for _, r in med.iterrows():
        print(f"{r['label']:<22}{r['tokens_per_s']:>10.1f}{r['requests_per_s']:>8.2f}{1e3 * r['ttft_p50_s']:>9.0f}ms"
              f"{1e3 * r['ttft_p99_s']:>9.0f}ms{1e3 * r['tpot_p50_s']:>9.1f}ms{r['e2e_p99_s']:>9.2f}s{r['ok']:>5.0f}")
    by = med.set_index("label")
    ratio = by.loc["continuous batching", "tokens_per_s"] / by.loc["batch size 1", "tokens_per_s"]
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
    print(f"\ncontinuous batching / batch size 1 throughput at concurrency {args.concurrency}: {ratio:.2f}x "
          f"(target >= {TARGET_RATIO:.0f}x)  {verdict}")
    print(f"p99 TTFT: batch size 1 {1e3 * by.loc['batch size 1', 'ttft_p99_s']:.0f} ms, continuous batching "
          f"{1e3 * by.loc['continuous batching', 'ttft_p99_s']:.0f} ms")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
