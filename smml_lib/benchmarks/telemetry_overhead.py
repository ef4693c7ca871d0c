"""Telemetry sampler overhead: CPU time of the sampler thread at 10 Hz, as % of one core (target < 1%).

Two independent measurements over the same window, with the main thread asleep:
1. the sampler thread's own CPU clock (``time.thread_time`` inside the thread);
2. the whole process's CPU time (``os.times``) during sampling minus the same window without a sampler.
The backend is whatever a lab gets here: NVML on a GPU machine, the CPU fallback elsewhere.

On NVML each PCIe throughput read samples the bus for 20 ms inside the driver; the sampler reads it at most
every ``--pcie-interval`` seconds (1 s, as in the labs). ``--pcie-interval inf`` measures the cost without it.

    smml bench telemetry_overhead [--seconds 10] [--hz 10] [--pcie-interval 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from smml_lib.perf.telemetry import Sampler

TARGET_PCT = 1.0


def _process_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml bench telemetry_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--hz", type=float, default=10.0)
    p.add_argument("--pcie-interval", type=float, default=1.0, help="s between PCIe reads (NVML; inf = never)")
    args = p.parse_args(argv)

    c0 = _process_cpu_s()
    time.sleep(args.seconds)
    idle_cpu_s = _process_cpu_s() - c0

    tel = Sampler(interval_s=1.0 / args.hz, pcie_interval_s=args.pcie_interval)
    c0, w0 = _process_cpu_s(), time.perf_counter()
    with tel:
        time.sleep(args.seconds)
    proc_cpu_s, wall = _process_cpu_s() - c0, time.perf_counter() - w0
    ov = tel.overhead()
    by_process = 100 * max(0.0, proc_cpu_s - idle_cpu_s) / wall
    print(f"backend {tel.backend_name}, {args.hz:g} Hz for {args.seconds:g} s, PCIe every {args.pcie_interval:g} s: "
          f"{ov['samples']} samples, "
          f"{len(tel.frame.columns)} columns, errors: {len(tel.errors)}")
    print(f"  sampler thread CPU : {ov['thread_cpu_s'] * 1e3:.1f} ms = {ov['cpu_pct_of_one_core']:.3f}% of one core "
          f"({ov['cpu_ms_per_sample']:.3f} ms per sample)")
    print(f"  process CPU delta  : {by_process:.3f}% of one core (idle baseline {idle_cpu_s * 1e3:.1f} ms subtracted)")
    worst = max(ov["cpu_pct_of_one_core"], by_process)
    print(f"overhead {worst:.3f}% of one core (target < {TARGET_PCT:g}%) {'PASS' if worst < TARGET_PCT else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
