"""Hello from every rank of a (multi-node) torchrun job: where it runs, and an all-reduce proving the group works.

    torchrun --standalone --nproc-per-node 2 -m smml_lib.distributed.workers.hello
    sbatch job.sbatch     # from smml_lib.cluster.sbatch.render_sbatch(TorchrunJob("hello", nodes=2))

Each rank reports who it is (rank, local rank, node rank), where it runs (Slurm node name, the address and
interface the job script chose) and the sum of an all-reduce of the ranks (must be 0+1+...+(n-1)). It is
the smallest job that proves a cluster works end to end: rendezvous, process group, network.

``--steps N --step-s S`` turns it into a tiny "training" loop (an all-reduce per step, S seconds each) with
the same stop protocol as ``smml_lib.distributed.workers.train``: SIGTERM/SIGUSR1 -> finish the step, save the step
counter to ``--state-dir``, exit 75; ``--resume`` continues from there. The preemption tests use it
because it needs no model (seconds instead of tens of seconds on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist

from smml_lib.checkpoint.stop import EXIT_STOPPED, StopRequest
from smml_lib.distributed.runtime import (
    add_common_args,
    barrier,
    init_distributed,
    maybe_inject_fault,
    print0,
    run_worker,
    write_result,
)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml_lib.distributed.workers.hello", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=0, help="all-reduce steps after the hello (0: just the hello)")
    p.add_argument("--step-s", type=float, default=0.2, help="seconds each step takes (a sleep)")
    p.add_argument("--state-dir", default=None, help="where the step counter is saved on a stop")
    p.add_argument("--resume", action="store_true", help="continue from the step saved in --state-dir")
    add_common_args(p)
    args = p.parse_args(argv)
    stop = StopRequest().install_signal_handlers()
    t0 = time.perf_counter()
    env = init_distributed(args.backend, args.pg_timeout_s)
    init_s = time.perf_counter() - t0
    t = torch.tensor([float(env.rank)], device=env.device)
    if env.distributed:
        dist.all_reduce(t)
    expected = env.world_size * (env.world_size - 1) / 2
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    ip, ifname = os.environ.get("NODE_IP", ""), os.environ.get("SMML_IFNAME", "")
    print(f"hello from rank {env.rank}/{env.world_size} (local {env.local_rank}, node rank {env.node_rank}) on "
          f"{node} {ip} {ifname}: all-reduce sum {t.item():g} (expected {expected:g})", flush=True)
    state = Path(args.state_dir or os.environ.get("SMML_RUN_DIR", ".")) / "hello-state.json"
    start = json.loads(state.read_text())["step"] if args.resume and state.exists() else 0
    if start:
        print0(f"resuming at step {start + 1} (saved in {state})", env=env)
    step, stopped = start, False
    for step in range(start + 1, args.steps + 1):
        maybe_inject_fault(args, env, step)
        time.sleep(args.step_s)
        x = torch.ones(1024, device=env.device)
        if env.distributed:
            dist.all_reduce(x)
        print0(f"step {step:>4}/{args.steps}  sum {x[0].item():g}", env=env)
        stopped = stop.check(env)
        if stopped:
            break
    if stopped and env.rank == 0:
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"step": step}))
    barrier(env)
    write_result({"node": node, "node_ip": ip, "ifname": ifname, "local_rank": env.local_rank,
                  "node_rank": env.node_rank, "world_size": env.world_size, "num_nodes": env.num_nodes,
                  "backend": env.backend, "allreduce_sum": t.item(), "expected_sum": expected, "init_s": init_s,
                  "first_step": start + 1, "last_step": step, "stopped_early": stopped,
                  "restart": int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0)}, env, tag="hello")
    if stopped:
        print0(f"stopped after step {step} ({stop.reason}); exit code {EXIT_STOPPED}: rerun with --resume", env=env)
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    run_worker(main)
