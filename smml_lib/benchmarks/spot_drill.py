"""Spot interruption drill: steps and time lost, notice-to-checkpoint, and bitwise resume (issue 6 targets).

Targets: with an interruption notice no step is lost and the checkpoint is saved inside the notice window;
killed without notice, at most the steps since the last checkpoint are lost; the resumed run ends with the
uninterrupted run's parameters (bitwise on CPU). ``--real`` uses the GPU sizes of Lab 04-3 (all GPUs, FSDP,
a 4-layer Llama-3.2-1B-shaped model, AWS's 120 s window and 5 s polling).
"""

from __future__ import annotations

import argparse

from smml_lib.cost import metadata_service, spot_drill
from smml_lib.distributed.train_config import TrainConfig


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml bench spot_drill", description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default="notice,sigterm,kill")
    p.add_argument("--real", action="store_true", help="GPU sizes (as Lab 04-3 in real mode)")
    p.add_argument("--nproc", type=int, default=None)
    args = p.parse_args(argv)
    cfg = spot_drill.DrillConfig(nproc=args.nproc, echo=False)
    if args.real:
        train = TrainConfig(model="preset:Llama-3.2-1B", layers=4, seq_len=512, global_batch=8, precision="bf16",
                            strategy="fsdp", max_steps=40, checkpoint_every=10)
        cfg = spot_drill.DrillConfig(train, interrupt_after_step=25, notice_window_s=metadata_service.AWS_NOTICE_S,
                                     poll_s=metadata_service.AWS_POLL_S, nproc=args.nproc, echo=False)
    try:
        report = spot_drill.run_drill(cfg, [s.strip() for s in args.scenarios.split(",") if s.strip()])
    except (spot_drill.DrillError, RuntimeError) as exc:
        print(f"spot_drill: could not run the drill: {exc}")
        return 1
    print(f"baseline: {cfg.max_steps} steps in {report.baseline_wall_s:.1f} s (step {report.baseline_step_s:.3f} s, "
          f"checkpoint save {report.baseline_save_s:.2f} s)")
    for r in report.rows:
        bound = 0 if r["scenario"] in ("notice", "sigterm") else cfg.checkpoint_every
        lost_ok = 0 <= r["steps_lost"] <= bound
        same = r["bitwise_equal"] if not args.real else r["max_abs_diff"] <= 2e-3 * cfg.max_steps
        print(f"{r['scenario']:>8}: steps lost {r['steps_lost']} (target <= {bound}) {'PASS' if lost_ok else 'MISS'}; "
              f"final parameters {'bitwise equal' if r['bitwise_equal'] else 'max |diff| %.3g' % r['max_abs_diff']} "
              f"{'PASS' if same else 'MISS'}; wall time lost {r['time_lost_s']:.1f} s")
        if r["event_to_checkpoint_s"] is not None:
            fit = r["event_to_checkpoint_s"] < cfg.notice_window_s
            print(f"{'':>8}  event to checkpoint saved {r['event_to_checkpoint_s']:.2f} s "
                  f"(target < {cfg.notice_window_s:.0f} s window) {'PASS' if fit else 'MISS'}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
