"""Soak: 1,000 requests at concurrency 32: none lost, each answered 200 or 429, server memory (RSS) flat.

Target (issue 5). The server (continuous batching, 16 slots, a queue of 12: 32 users overflow it on purpose,
so some requests must be refused with 429; a refused user waits 0.5 s before its next request) runs as a subprocess on 127.0.0.1. After a warm-up, five rounds of
200 requests alternate streaming and plain JSON answers with 4-32 tokens each. After every round the
server's resident memory is read; "flat" means the line fitted through those readings rises by less than
``SLOPE_TARGET_MB`` per 100 requests and the whole run adds less than ``GROWTH_TARGET`` of the baseline.

"None lost" is checked on both sides: every request the client sent has a recorded answer (200 or 429), and
the server's counters agree (sequences accepted = sequences completed; refusals = the 429s the client saw).

    smml bench serving_soak [--requests 1000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from smml_lib.common.device import cpu_name, device_name
from smml_lib.serving import loadgen
from smml_lib.serving.process import start_server

SLOPE_TARGET_MB = 1.0  # MB of RSS per 100 requests
GROWTH_TARGET = 0.05  # of the baseline RSS


def soak(model: str = "tiny", *, requests: int = 1000, concurrency: int = 32, rounds: int = 5, warmup: int = 100,
         max_batch: int = 16, max_queue: int = 12, time_limit_s: float = 300.0) -> dict:
    """Run the soak; returns the per-request results, RSS samples and server counters."""
    with start_server(model, scheduler="continuous", max_batch=max_batch, max_queue=max_queue) as server:
        spec = loadgen.LoadSpec(server.model_name, loadgen.make_prompts(64), max_tokens=(4, 32), ignore_eos=True)
        loadgen.run_sync(loadgen.run_level(server.base_url, spec, concurrency=concurrency, num_requests=warmup,
                                           time_limit_s=time_limit_s, pause_after_429_s=0.5))
        before = server.health()
        rss = [(0, server.rss_bytes())]
        results, t0 = [], time.perf_counter()
        per_round = requests // rounds
        for r in range(rounds):
            spec = loadgen.LoadSpec(server.model_name, loadgen.make_prompts(64, seed=r + 1), max_tokens=(4, 32),
                                    ignore_eos=True, stream=r % 2 == 0, seed=r + 1)
            got = loadgen.run_sync(loadgen.run_level(server.base_url, spec, concurrency=concurrency,
                                                     num_requests=per_round, time_limit_s=time_limit_s,
                                                     label=f"round {r}", pause_after_429_s=0.5))
            results += got
            rss.append((len(results), server.rss_bytes()))
        wall_s = time.perf_counter() - t0
        after = server.health()
    df = pd.DataFrame([r.__dict__ for r in results])
    return {"results": df, "rss": pd.DataFrame(rss, columns=["requests", "rss_bytes"]), "before": before,
            "after": after, "wall_s": wall_s, "sent": per_round * rounds}


def verdicts(run: dict) -> dict[str, tuple[bool, str]]:
    """Each target: (met?, the figures behind it)."""
    df, rss, before, after = run["results"], run["rss"], run["before"], run["after"]
    statuses = df["status"].value_counts().to_dict()
    answered = len(df) == run["sent"] and df["index"].groupby(df["label"]).nunique().sum() == run["sent"]
    only_200_429 = set(statuses) <= {200, 429}
    accepted = after["submitted"] - before["submitted"]
    completed = sum(after.get(k, 0) - before.get(k, 0) for k in ("finished_length", "finished_stop"))
    refused = after.get("rejected", 0) - before.get("rejected", 0)
    books = accepted == completed == statuses.get(200, 0) and refused == statuses.get(429, 0)
    mb = rss["rss_bytes"].to_numpy() / 1e6
    slope = float(np.polyfit(rss["requests"].to_numpy() / 100, mb, 1)[0])
    growth = (mb[-1] - mb[0]) / mb[0]
    flat = slope < SLOPE_TARGET_MB and growth < GROWTH_TARGET
    return {
        f"{run['sent']} requests sent, every one answered": (answered, f"{len(df)} answers recorded"),
        "each answered 200 or 429": (only_200_429, f"statuses {statuses}"),
        "server books balance (none lost)": (books, f"accepted {accepted}, completed {completed}, refused {refused}; "
                                             f"client saw {statuses.get(200, 0)} x 200, {statuses.get(429, 0)} x 429"),
        "server RSS flat": (flat, f"{mb[0]:.1f} MB -> {mb[-1]:.1f} MB ({100 * growth:+.2f}%), slope "
                            f"{slope:+.3f} MB per 100 requests (targets < {SLOPE_TARGET_MB} MB/100, "
                            f"< {100 * GROWTH_TARGET:.0f}%)"),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml bench serving_soak", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args(argv)

    print(f"machine: {device_name()} / {cpu_name()}; model {args.model}; {args.requests} requests at concurrency "
          f"{args.concurrency} (continuous batching, 16 slots, queue 12)")
    run = soak(args.model, requests=args.requests, concurrency=args.concurrency)
    print(f"ran {run['wall_s']:.1f} s; RSS after each round (MB): "
          + ", ".join(f"{n}: {b / 1e6:.1f}" for n, b in zip(run["rss"]["requests"], run["rss"]["rss_bytes"])))
    ok = run["results"][run["results"]["ok"]]
    print(f"answered requests: TTFT p99 {1e3 * ok['ttft_s'].quantile(0.99):.0f} ms (streamed rounds), "
          f"e2e p99 {ok['e2e_s'].quantile(0.99):.2f} s")
    for name, (met, detail) in verdicts(run).items():
        print(f"{name:<42} {detail}  {'PASS' if met else 'MISS'}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
