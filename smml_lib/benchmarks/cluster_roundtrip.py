"""Local Slurm cluster round trip: up -> a 2-node torchrun job finished -> down (target < 90 s on CI).

Issue 5's target: starting the local two-node cluster, running a real 2-node ``torchrun`` job through
``sbatch`` (``smml_lib.distributed.workers.hello``: rendezvous, gloo process group, one all-reduce across the nodes) and
stopping everything again takes under 90 s on the 2-core CI machine. Needs root and the Slurm packages;
without them it says why and exits 2 (nothing measured). A cluster that is already running is stopped
first so that "up" is measured from nothing.

    smml bench cluster_roundtrip [--nproc-per-node 1] [--repeats 1]
"""

from __future__ import annotations

import argparse
import sys
import time

from smml_lib.cluster import host, jobs, local_cluster, sbatch

TARGET_S = 90.0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml bench cluster_roundtrip", description=__doc__.splitlines()[0])
    p.add_argument("--nproc-per-node", type=int, default=1, help="torchrun processes per node")
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args(argv)
    problems = host.preflight()
    if problems:
        print("cannot measure: " + "; ".join(problems))
        return 2
    local_cluster.down()
    totals = []
    for i in range(a.repeats):
        t0 = time.monotonic()
        c = local_cluster.up()
        t_up = time.monotonic() - t0
        try:
            job = sbatch.TorchrunJob("hello", nodes=2, nproc_per_node=a.nproc_per_node, name="roundtrip")
            run = jobs.submit_and_follow(job, c, timeout_s=300, echo=False)
            t_job = time.monotonic() - t0 - t_up
            df = run.results()
            ok = len(df) == job.world_size and bool((df["allreduce_sum"] == df["expected_sum"]).all()) \
                and df["node"].nunique() == 2
        finally:
            t1 = time.monotonic()
            report = local_cluster.down()
            t_down = time.monotonic() - t1
        total = time.monotonic() - t0
        totals.append(total)
        print(f"run {i + 1}: up {t_up:5.1f} s | job {t_job:5.1f} s (queued {run.seconds_in('PENDING'):.1f} s, "
              f"{job.world_size} ranks on {df['node'].nunique()} nodes, all-reduce {'correct' if ok else 'WRONG'}) | "
              f"down {t_down:4.1f} s (clean: {report.clean}) | total {total:5.1f} s")
        if not (ok and report.clean):
            print("MISS: the job did not prove a working 2-node group, or down left something behind")
            return 1
    best = min(totals)
    verdict = "PASS" if best < TARGET_S else "MISS"
    print(f"cluster up -> 2-node job finished -> down: {best:.1f} s (target < {TARGET_S:.0f} s)  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
