"""Benchmark the collectives distributed training is made of: all-reduce, all-gather, reduce-scatter.

    torchrun --standalone --nproc-per-node 4 -m smml_lib.distributed.workers.collectives --max-bytes 1G
    (Module 03 runs the same command on every node of a 2-node job: any world size works.)

Method (as stas00's ``all_reduce_bench.py`` and NVIDIA's nccl-tests): for each operation and message
size, a few warm-up calls, then timed iterations of *barrier -> start -> collective -> stop*; CUDA events
on a GPU (after a synchronize), ``perf_counter`` on a CPU (gloo calls block). Each rank reports its
median; the slowest rank is the collective's time. Sizes follow nccl-tests: all-reduce counts the
buffer, all-gather the gathered output (``n`` x the per-rank input), reduce-scatter the input
(``n`` x the per-rank output).

- **algorithm bandwidth** ``algbw = size / time``: what the caller sees.
- **bus bandwidth** ``busbw = algbw x factor``: the rate each link actually carried. A ring all-reduce
  sends and receives ``2 (n-1)/n`` of the buffer per rank; all-gather and reduce-scatter ``(n-1)/n``.
  busbw is comparable across GPU counts and with the hardware's link speed (PCIe Gen4 x16: about
  25 GB/s achievable of 31.5 per direction; NVLink4: hundreds).

Rank 0 also reports the GPU peer-to-peer access matrix (``smml_lib.perf.hardware.peer_access_matrix``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from smml_lib.distributed.runtime import DistEnv, add_common_args, barrier, init_distributed, maybe_inject_fault, print0, \
    run_worker, write_result

OPS = ("all_reduce", "all_gather", "reduce_scatter")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30}


def bus_factor(op: str, world_size: int) -> float:
    """nccl-tests' busbw / algbw: 2(n-1)/n for all-reduce, (n-1)/n for all-gather and reduce-scatter."""
    n = world_size
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter"):
        return (n - 1) / n
    raise ValueError(f"unknown collective {op!r}; known: {', '.join(OPS)}")


def collective_time_s(op: str, size_bytes: float, world_size: int, busbw_gbps: float) -> float:
    """Predicted time of one collective of ``size_bytes`` (nccl-tests size) at bus bandwidth ``busbw_gbps``."""
    if world_size < 2:
        return 0.0
    return size_bytes * bus_factor(op, world_size) / (busbw_gbps * 1e9)


def parse_size(text: str) -> int:
    """``"32K"`` -> 32768, ``"1G"`` -> 2**30, ``"1000"`` -> 1000 (binary units, as nccl-tests)."""
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in _UNITS:
        return int(float(text[:-1]) * _UNITS[text[-1]])
    return int(text)


def message_sizes(min_bytes: int, max_bytes: int, factor: int = 4) -> list[int]:
    """Geometric sizes from ``min_bytes`` to ``max_bytes`` (both included)."""
    sizes, s = [], min_bytes
    while s < max_bytes:
        sizes.append(s)
        s *= factor
    return sizes + [max_bytes]


def summarize(df: Any) -> Any:
    """Per (op, size): the slowest rank's median time, then algbw and busbw in GB/s (1e9 bytes/s)."""
    keys = ["op", "size_bytes", "world_size", "num_nodes", "backend", "dtype", "device_name"]
    keys = [k for k in keys if k in df.columns]
    out = df.groupby(keys, as_index=False).agg(time_s=("time_s", "max"), spread=("spread", "max"))
    out["algbw_gbps"] = out["size_bytes"] / out["time_s"] / 1e9
    out["busbw_gbps"] = out["algbw_gbps"] * [bus_factor(o, n) for o, n in zip(out["op"], out["world_size"])]
    return out.sort_values(["op", "size_bytes"]).reset_index(drop=True)


def busbw_at(summary: Any, op: str, size_bytes: float) -> float:
    """Bus bandwidth of ``op`` at ``size_bytes``, interpolated (log-size) between measured sizes."""
    import numpy as np

    part = summary[summary["op"] == op].sort_values("size_bytes")
    if part.empty:
        raise ValueError(f"no measurements of {op!r}")
    return float(np.interp(np.log(size_bytes), np.log(part["size_bytes"]), part["busbw_gbps"]))


def _time_op(op: str, size_bytes: int, env: DistEnv, dtype: Any, iters: int, warmup: int) -> list[float]:
    import torch
    import torch.distributed as dist

    elem = torch.tensor([], dtype=dtype).element_size()
    n = env.world_size
    count = max(n, size_bytes // elem // n * n)  # divisible by n for the gather/scatter shapes
    if op == "all_reduce":
        buf = torch.ones(count, dtype=dtype, device=env.device)
        call = lambda: dist.all_reduce(buf)  # noqa: E731
    elif op == "all_gather":
        src = torch.ones(count // n, dtype=dtype, device=env.device)
        out = torch.empty(count, dtype=dtype, device=env.device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
        call = lambda: gather(out, src)  # noqa: E731
    else:
        src = torch.ones(count, dtype=dtype, device=env.device)
        out = torch.empty(count // n, dtype=dtype, device=env.device)
        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        call = lambda: scatter(out, src)  # noqa: E731
    cuda = env.device.type == "cuda"
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(iters):
        barrier(env)
        if cuda:
            torch.cuda.synchronize(env.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            torch.cuda.synchronize(env.device)
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t0)
    return samples


def main(argv: list[str]) -> int:
    import numpy as np
    import torch

    p = argparse.ArgumentParser(prog="smml_lib.distributed.workers.collectives", description=__doc__.splitlines()[0])
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--min-bytes", default="32K")
    p.add_argument("--max-bytes", default="8M", help="1G on GPUs for the full sweep")
    p.add_argument("--factor", type=int, default=4, help="size step between measurements")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    add_common_args(p)
    args = p.parse_args(argv)
    env = init_distributed(args.backend, args.pg_timeout_s)
    if not env.distributed:
        raise SystemExit("worker_collectives needs at least 2 processes: run it with torchrun or the launcher")
    from smml_lib.perf.environment import device_name

    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    sizes = message_sizes(parse_size(args.min_bytes), parse_size(args.max_bytes), args.factor)
    print0(f"collectives on {env.world_size} ranks ({env.num_nodes} node(s), {env.backend}): "
           f"{len(sizes)} sizes {sizes[0]:,}..{sizes[-1]:,} bytes", env=env)
    maybe_inject_fault(args, env, 1)
    rows = []
    for op in args.ops.split(","):
        for size in sizes:
            s = _time_op(op, size, env, dtype, args.iters, args.warmup)
            med = float(np.median(s))
            spread = float((np.percentile(s, 90) - np.percentile(s, 10)) / med)
            busbw = size / med / 1e9 * bus_factor(op, env.world_size)
            rows.append({"op": op, "size_bytes": size, "time_s": med, "spread": spread, "iters": len(s),
                         "world_size": env.world_size, "num_nodes": env.num_nodes, "backend": env.backend,
                         "dtype": args.dtype, "device_name": device_name(env.device), "host": env.describe()["hostname"],
                         "busbw_gbps": busbw})
            print0(f"{op:>15} {size / 2**20:10.3f} MiB  {med * 1e6:10.1f} us  busbw {busbw:7.2f} GB/s", env=env)
    write_result(rows, env, tag="collectives", folder=args.run_dir)
    if env.local_rank == 0 and env.device.type == "cuda":  # one matrix per node (hardware.peer_access_matrix)
        n = torch.cuda.device_count()
        p2p = [{"host": env.describe()["hostname"], "src": f"cuda:{a}", "dst": f"cuda:{b}",
                "peer_access": a == b or bool(torch.cuda.can_device_access_peer(a, b))}
               for a in range(n) for b in range(n)]
        write_result(p2p, env, tag="aux-p2p", folder=args.run_dir)
    return 0


if __name__ == "__main__":
    run_worker(main)
