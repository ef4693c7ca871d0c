"""Benchmarks: scripts that print the figures the course promises (not timed unit tests).

Each module here has ``main(argv) -> int`` and a docstring whose first line says what it measures.
Run one with ``smml bench NAME`` (or ``python -m smml_lib.benchmarks.NAME``); ``smml bench --list``
lists them. A benchmark prints its figures, the target, and PASS / MISS, and exits 0 either way
unless it could not measure at all: targets are evidence for a human, not a flaky gate.

- ``harness_agreement``: the timing harness against ``triton.testing.do_bench`` (GPU);
- ``mamf``: the maximum achievable matmul against the dense datasheet peak;
- ``telemetry_overhead``: what the telemetry sampler costs the work it watches;
- ``decode_ladder``: decode at batch 1 against the bandwidth bound and the naive baseline;
- ``model_load``: how long loading takes, and how fast each kind of bad input fails;
- ``distributed``: collectives' bus bandwidth and single-process training throughput;
- ``planner_accuracy``: the memory planner against measured training runs;
- ``cluster_roundtrip``: a two-node job on the local Slurm cluster, submit to finished;
- ``serving_batching`` and ``serving_soak``: the server's batching gain, and many requests without loss;
- ``spot_drill``: the spot drill's steps lost with and without a notice;
- ``prices_fallback``: prices without network or credentials fall back to the snapshot, fast.

May import: common, perf, models, distributed, distributed.workers, checkpoint, cluster, serving, cost.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path


def available() -> dict[str, str]:
    """Benchmark name -> first docstring line, read from the source (listing imports none of them: no torch)."""
    out = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        out[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def cli(argv: list[str]) -> int:
    if not argv or argv[0] in ("--list", "-l", "-h", "--help"):
        print("usage: smml bench NAME [options]\n\nbenchmarks:")
        for name, doc in available().items():
            print(f"  {name:<22} {doc}")
        return 0
    name = argv[0].replace("-", "_")
    if name not in available():
        print(f"smml bench: no benchmark {argv[0]!r}; smml bench --list shows them")
        return 2
    return int(importlib.import_module(f"{__name__}.{name}").main(argv[1:]) or 0)
