"""The spot interruption drill: a training run is reclaimed mid-way, saves itself, resumes, and ends bitwise equal.

What happens on AWS when a spot instance is reclaimed: EC2 publishes an *interruption notice* two minutes
ahead, in the instance metadata (``/latest/meta-data/spot/instance-action`` answers 404 until then, and
then 200 with ``{"action": "terminate", "time": "..."}``) and as an EventBridge event; AWS suggests
polling every 5 seconds. When the time comes the instance shuts down: processes get SIGTERM, then SIGKILL.

The drill reproduces that on one machine, with the course's training worker (``smml_lib.distributed.workers.train``,
launched by ``smml_lib.distributed.launcher``):

1. ``imds.NoticeServer``: a stand-in for the metadata service on 127.0.0.1 (Python's ``http.server``), with
   the same paths, status codes and JSON, and IMDSv2 session tokens (``PUT /latest/api/token``) if asked for;
2. a **baseline** run trains N steps without interruption and dumps its final parameters;
3. the **drill** runs the same command with ``--notice-url`` pointing at the server; after step k we post the
   notice; the worker finishes its step, checkpoints, exits (code 75). If it were still running when the
   notice window closes, it would get SIGTERM, like an instance shutting down, then SIGKILL;
4. the run is **resumed** (``--resume``) and must end with parameters *bitwise equal* to the baseline's;
5. optional scenarios: ``"sigterm"`` (a shutdown without notice: SIGTERM only) and ``"kill"`` (SIGKILL with no
   warning, like a lost machine: the steps since the last checkpoint are lost and redone).

Reported per scenario: steps lost, seconds from notice to checkpoint, whether that fitted the window,
and the wall time lost compared with the uninterrupted run (restart + redone steps).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import psutil
import torch

from smml_lib.checkpoint import sharded as ckpt
from smml_lib.common import plots
from smml_lib.common.paths import output_dir
from smml_lib.cost.metadata_service import NoticeServer
from smml_lib.distributed import launcher
from smml_lib.distributed.train_config import TrainConfig

STEP_LINE = re.compile(r"step\s+(\d+)/(\d+)")


class DrillError(RuntimeError):
    """The drill could not show what it should (e.g. the run ended before the interruption)."""


# ------------------------------------------------------------------------------------------------ drill
DRILL_TRAINING = TrainConfig(model="tiny", seq_len=64, global_batch=4, max_steps=12, checkpoint_every=4)


@dataclass
class DrillConfig:
    """One drill: the training run it interrupts (``train``, smoke sizes by default) and the interruption's timing."""

    train: TrainConfig = DRILL_TRAINING  # one strategy, checkpoint_every > 0; the drill sets the folders
    interrupt_after_step: int = 6  # post the notice once this step is done (not a checkpoint step: kill loses work)
    notice_window_s: float = 15.0  # AWS: 120 s; scaled down for the drill
    poll_s: float = 0.2  # AWS suggests 5 s; the window must be much longer than this
    nproc: int | None = None  # launcher default: all GPUs, else 2 CPU processes
    timeout_s: float = 600.0
    workdir: str | None = None
    echo: bool = True
    keep_checkpoints: bool = False  # delete each run's checkpoints once compared (a 1B model writes GBs per save)

    @property
    def max_steps(self) -> int:
        return self.train.max_steps

    @property
    def checkpoint_every(self) -> int:
        return self.train.checkpoint_every

    @property
    def strategy(self) -> str:
        return self.train.strategy


@dataclass
class DrillReport:
    config: DrillConfig
    baseline_wall_s: float
    baseline_step_s: float
    baseline_save_s: float  # median time of one checkpoint save in the baseline run
    baseline_losses: list[float] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    resumed_losses: dict[str, tuple[int, list[float]]] = field(default_factory=dict)  # scenario -> (first step, losses)

    def frame(self) -> Any:
        return pd.DataFrame(self.rows)

    def row(self, scenario: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["scenario"] == scenario)


def _say(cfg: DrillConfig, text: str) -> None:
    if cfg.echo:
        print(text, flush=True)


class _Watched:
    """A launcher job whose output we watch from this thread while ``wait()`` runs in another."""

    def __init__(self, job: Any, cfg: DrillConfig, label: str) -> None:
        self.job, self.cfg, self.label, self.t0 = job, cfg, label, time.time()
        self.result: Any = None
        self.error: BaseException | None = None
        self._seen = 0
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        try:
            self.result = self.job.wait()
        except BaseException as exc:  # handed to the main thread
            self.error = exc

    def lines(self) -> list[str]:
        tail = list(self.job.tail)
        new, self._seen = tail[self._seen:], len(tail)
        for line in new:
            if any(k in line for k in ("step ", "checkpoint", "stop", "resumed", "interruption")):
                _say(self.cfg, f"  [{self.label} +{time.time() - self.t0:5.1f} s] {line.split(':', 1)[-1].strip()}")
        return new

    def last_step(self) -> int:
        """The last step rank 0 reported: from the streamed output, and after the job ended also from rank 0's
        log file (torchrun copies the log to the console with a delay; a killed torchrun never forwards the
        last lines)."""
        lines = list(self.job.tail)
        if not self.thread.is_alive():
            for log in Path(self.job.run_dir, "logs").glob("**/0/stdout.log"):
                lines += log.read_text(errors="replace").splitlines()
        steps = [int(m.group(1)) for line in lines for m in [STEP_LINE.search(line)] if m]
        return max(steps, default=0)

    def wait_for_step(self, step: int) -> None:
        deadline = time.time() + self.cfg.timeout_s
        while self.last_step() < step:
            self.lines()
            if not self.thread.is_alive():
                raise DrillError(f"{self.label}: the run ended at step {self.last_step()} before step {step}: "
                                 f"{self.error or 'increase max_steps'}")
            if time.time() > deadline:
                raise DrillError(f"{self.label}: step {step} not reached within {self.cfg.timeout_s:.0f} s")
            time.sleep(0.02)

    def join(self, timeout_s: float) -> bool:
        end = time.time() + timeout_s
        while self.thread.is_alive() and time.time() < end:
            self.lines()
            time.sleep(0.02)
        self.lines()
        return not self.thread.is_alive()


def _kill_everything(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (torchrun first, so it cannot SIGTERM the workers).

    torchrun starts each worker in its own session, so killing torchrun's process group would miss them."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def _train_args(cfg: DrillConfig, ckpt_dir: Path, *, dump: bool = True, **changes: Any) -> list[str]:
    """The worker's flags; ``dump`` writes the final parameters (the runs that end: baseline and resumed)."""
    return cfg.train.replace(checkpoint_dir=str(ckpt_dir), dump_params=dump, **changes).argv()


def _params(run_dir: str | os.PathLike, strategy: str) -> dict[str, Any]:
    return torch.load(Path(run_dir) / f"params-{strategy}.pt", weights_only=True)


def compare_params(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, float]:
    """(bitwise equal, largest absolute difference) of two state dicts with the same keys."""
    if a.keys() != b.keys():
        return False, float("inf")
    equal = all(torch.equal(a[k], b[k]) for k in a)
    diff = max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
    return equal, diff


def run_baseline(cfg: DrillConfig, workdir: Path) -> tuple[Any, dict[str, Any]]:
    """The uninterrupted run: results DataFrame and final parameters."""
    _say(cfg, f"baseline: {cfg.max_steps} steps, checkpoint every {cfg.checkpoint_every}, no interruption")
    df = launcher.launch("train", _train_args(cfg, workdir / "baseline" / "ckpt"), nproc=cfg.nproc,
                         timeout_s=cfg.timeout_s, run_dir=workdir / "baseline" / "run", echo=False)
    if not cfg.keep_checkpoints:
        shutil.rmtree(workdir / "baseline" / "ckpt", ignore_errors=True)
    return df, _params(df.attrs["run_dir"], cfg.strategy)


def run_scenario(cfg: DrillConfig, workdir: Path, scenario: str,
                 baseline: tuple[Any, dict[str, Any]]) -> dict[str, Any]:
    """Interrupt a run (``"notice"``, ``"sigterm"`` or ``"kill"``), resume it, compare with the baseline."""
    if scenario not in ("notice", "sigterm", "kill"):
        raise ValueError(f"scenario {scenario!r}: use 'notice', 'sigterm' or 'kill'")
    base_df, base_params = baseline
    folder, ckpt_dir = workdir / scenario, workdir / scenario / "ckpt"
    with NoticeServer() as imds:
        extra = {"notice_url": imds.url, "notice_poll_s": cfg.poll_s} if scenario == "notice" else {}
        _say(cfg, f"{scenario}: start, interrupt after step {cfg.interrupt_after_step}")
        job = launcher.start("train", _train_args(cfg, ckpt_dir, dump=False, **extra), nproc=cfg.nproc,
                             timeout_s=cfg.timeout_s, run_dir=folder / "run", echo=False)
        run = _Watched(job, cfg, scenario)
        run.wait_for_step(cfg.interrupt_after_step)
        run.lines()
        t_event = time.time()
        if scenario == "notice":
            notice = imds.interrupt(cfg.notice_window_s)
            _say(cfg, f"  notice posted: {notice}")
        elif scenario == "sigterm":
            job.stop(signal.SIGTERM)
            _say(cfg, "  SIGTERM sent (a shutdown with no notice)")
        else:
            _kill_everything(job.pid)  # the machine is gone: no signal handler runs anywhere
            _say(cfg, "  SIGKILL sent to the whole job (a lost machine)")
        in_window = run.join(cfg.notice_window_s)
        if not in_window:  # the instance shuts down: SIGTERM, then SIGKILL after the grace period
            _say(cfg, "  window over: SIGTERM, then SIGKILL")
            job.stop(signal.SIGTERM)
            if not run.join(5.0):
                job.kill(grace_s=0)
                run.join(10.0)
        t_exit = time.time()
        seen_at = imds.first_seen_at
    latest = ckpt.latest_checkpoint(ckpt_dir)
    ckpt_step = ckpt.read_meta(latest)["step"] if latest else 0
    ckpt_saved = ckpt.read_meta(latest)["saved_utc"] if latest else None
    last_step = run.last_step()
    if last_step >= cfg.max_steps:
        raise DrillError(f"{scenario}: the run finished all {cfg.max_steps} steps before it could be interrupted")
    interrupted = run.result
    _say(cfg, f"{scenario}: resume from the checkpoint of step {ckpt_step}")
    t_resume = time.time()
    resumed = launcher.launch("train", _train_args(cfg, ckpt_dir, resume=True), nproc=cfg.nproc,
                              timeout_s=cfg.timeout_s, run_dir=folder / "resume", echo=False)
    resume_wall = time.time() - t_resume
    equal, diff = compare_params(base_params, _params(resumed.attrs["run_dir"], cfg.strategy))
    r0 = resumed[resumed["rank"] == 0].iloc[0]
    i0 = interrupted[interrupted["rank"] == 0].iloc[0] if interrupted is not None and len(interrupted) else None
    first_wall = t_exit - run.t0
    row = {"scenario": scenario, "interrupted_after_step": last_step, "checkpoint_step": ckpt_step,
           "steps_lost": last_step - ckpt_step, "stopped_cleanly": bool(i0 is not None and i0["stopped_early"]),
           "torchrun_exit_code": job.proc.returncode, "notice_seen_s": (seen_at - t_event) if seen_at else None,
           "event_to_checkpoint_s": (ckpt_saved - t_event) if ckpt_saved and ckpt_saved >= t_event else None,
           "event_to_exit_s": t_exit - t_event, "window_s": cfg.notice_window_s if scenario == "notice" else None,
           "exited_in_window": in_window, "resumed_from_step": r0["resumed_from_step"],
           "load_s": r0["load_s"], "first_run_wall_s": first_wall, "resume_wall_s": resume_wall,
           "time_lost_s": first_wall + resume_wall - base_df.attrs["wall_s"],
           "bitwise_equal": equal, "max_abs_diff": diff}
    row["_resumed_losses"] = (int(r0["first_step"]), list(r0["losses"]))
    if not cfg.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    _say(cfg, f"{scenario}: steps lost {row['steps_lost']}, time lost {row['time_lost_s']:.1f} s, "
              f"final parameters bitwise equal: {equal}")
    return row


def run_drill(cfg: DrillConfig | None = None, scenarios: Sequence[str] = ("notice",)) -> DrillReport:
    """Baseline, then each scenario interrupted and resumed; see the module docstring."""
    cfg = cfg or DrillConfig()
    if cfg.interrupt_after_step >= cfg.max_steps:
        raise ValueError("interrupt_after_step must be below max_steps")
    if cfg.notice_window_s <= 3 * cfg.poll_s:
        raise ValueError("the notice window must be several poll intervals long")
    workdir = Path(cfg.workdir) if cfg.workdir else output_dir("spot_drill", time.strftime("%Y%m%d-%H%M%S")
                                                                + f"-{secrets.token_hex(3)}")
    baseline = run_baseline(cfg, workdir)
    b0 = baseline[0][baseline[0]["rank"] == 0].iloc[0]
    report = DrillReport(cfg, baseline[0].attrs["wall_s"], float(b0["step_time_s"]), float(b0["save_s"]),
                         list(b0["losses"]))
    for scenario in scenarios:
        row = run_scenario(cfg, workdir, scenario, baseline)
        report.resumed_losses[scenario] = row.pop("_resumed_losses")
        report.rows.append(row)
    (workdir / "report.json").write_text(json.dumps({"config": asdict(cfg), "baseline_wall_s": report.baseline_wall_s,
                                                     "rows": report.rows}, indent=1, default=str))
    return report


def plot_drill(report: DrillReport, name: str = "m04_spot_drill") -> None:
    """Loss per step: the uninterrupted run as a line, each resumed run's steps on top of it as markers."""
    fig, ax = plots.figure(size=(7, 4), title="Spot drill: resumed runs retrace the uninterrupted one")
    steps = range(1, len(report.baseline_losses) + 1)
    ax.plot(list(steps), report.baseline_losses, color="0.3", lw=2, label="uninterrupted")
    for (scenario, (first, losses)), marker in zip(report.resumed_losses.items(), "oxs^"):
        row = report.row(scenario)
        ax.plot(range(first, first + len(losses)), losses, marker, ms=7, mfc="none",
                label=f"{scenario}: resumed from step {row['checkpoint_step']} ({row['steps_lost']} lost)")
        ax.axvline(row["interrupted_after_step"] + 0.5, ls=":", color="0.5")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.legend()
    plots.finish(fig, name)
