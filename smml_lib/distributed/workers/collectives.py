"""Benchmark the collectives distributed training is made of: all-reduce, all-gather, reduce-scatter.

    torchrun --standalone --nproc-per-node 4 -m smml_lib.distributed.workers.collectives --max-bytes 1G
    (Module 03 runs the same command on every node of a 2-node job: any world size works.)

Method (as stas00's ``all_reduce_bench.py`` and NVIDIA's nccl-tests): for each operation and message
size, a few warm-up calls, then timed iterations of *barrier -> start -> collective -> stop*; CUDA events
on a GPU (after a synchronize), ``perf_counter`` on a CPU (gloo calls block). Each rank reports its
median; the slowest rank is the collective's time. Sizes follow nccl-tests: all-reduce counts the
buffer, all-gather the gathered output (``n`` x the per-rank input), reduce-scatter the input
(``n`` x the per-rank output).

What the times mean (algorithm and bus bandwidth) is ``smml_lib.distributed.collectives``, which also
turns all ranks' rows into one table (``summarize``).

Rank 0 also reports the GPU peer-to-peer access matrix (``smml_lib.perf.hardware.peer_access_matrix``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from smml_lib.common.device import device_name
from smml_lib.distributed.collectives import OPS, bus_factor, message_sizes, parse_size
from smml_lib.distributed.runtime import (
    DistEnv,
    add_common_args,
    barrier,
    init_distributed,
    maybe_inject_fault,
    print0,
    run_worker,
    write_result,
)


def _time_op(op: str, size_bytes: int, env: DistEnv, dtype: Any, iters: int, warmup: int) -> list[float]:
    elem = torch.tensor([], dtype=dtype).element_size()
    n = env.world_size
    count = max(n, size_bytes // elem // n * n)  # divisible by n for the gather/scatter shapes
    if op == "all_reduce":
        buf = torch.ones(count, dtype=dtype, device=env.device)
        call = lambda: dist.all_reduce(buf)
    elif op == "all_gather":
        src = torch.ones(count // n, dtype=dtype, device=env.device)
        out = torch.empty(count, dtype=dtype, device=env.device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
        call = lambda: gather(out, src)
    else:
        src = torch.ones(count, dtype=dtype, device=env.device)
        out = torch.empty(count // n, dtype=dtype, device=env.device)
        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        call = lambda: scatter(out, src)
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
        raise SystemExit("the collectives worker needs at least 2 processes: run it with torchrun or the launcher")

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
                         "dtype": args.dtype, "device_name": device_name(env.device),
                         "host": env.describe()["hostname"],
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
