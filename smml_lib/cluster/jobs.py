"""Slurm from a notebook: submit a multi-node torchrun job, follow it, read its logs and results.

    job = TorchrunJob("train", ["--strategy", "ddp", "--max-steps", "20"], nodes=2, nproc_per_node=4,
                      gpus_per_node=4)
    print(render_sbatch(job, "<run folder>"))       # the exact script (smml_lib.cluster.sbatch explains it)
    run = submit_and_follow(job, cluster)           # PENDING -> RUNNING -> COMPLETED, with timings
    run.results()                                   # every rank's result rows (smml_lib.distributed.launcher format)

**Following a job**: ``squeue``/``scontrol show job`` while Slurm remembers it (``MinJobAge``), then
``sacct`` (accounting database, or ``sacct --completion`` with the local cluster's job-completion log).
Every Slurm command runs with a timeout; failures raise ``SlurmError`` / ``JobFailed`` with the state,
exit code, node and log tail (and the first failing rank's traceback when a worker recorded it).
``preempt`` sends the batch script the warning signal Slurm sends before a time limit. Without Slurm,
``submit_and_follow`` runs the same torchrun command on this machine (one node) and says so.

Longer than ~300 lines because submitting, following, explaining a failure and the Slurm-less fallback are
one protocol around ``JobRun``: split, each part would need the others' internals.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from smml_lib.cluster.sbatch import TorchrunJob, write_script
from smml_lib.distributed.job import LaunchError, failure_message, read_results
from smml_lib.distributed.launcher import start

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED", "SPECIAL_EXIT"}


class SlurmError(RuntimeError):
    """Slurm is unreachable, refused the job, or a job could not be followed; the message says what to do."""


class JobFailed(SlurmError):
    """A job ended in a state other than COMPLETED; ``run`` holds its state, exit code, nodes and log."""

    def __init__(self, message: str, run: "JobRun"):
        super().__init__(message)
        self.run = run


def slurm_cmd(args: list[str], env: dict[str, str] | None = None, timeout_s: float = 15.0,
              check: bool = True) -> subprocess.CompletedProcess:
    """Run a Slurm client command with a timeout; ``SlurmError`` when it is missing, hangs or fails."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s,
                             env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SlurmError(f"{args[0]} not found: this machine has no Slurm client. Use the course cluster's login "
                         "node, or a local cluster (smml cluster up; needs root and the slurm packages).") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{' '.join(args[:3])}` got no answer from Slurm within {timeout_s:.0f} s: is slurmctld "
                         "running and reachable (scontrol ping)?") from None
    if check and out.returncode != 0:
        hint = " Is Slurm up (scontrol ping; the local cluster: smml cluster up)?" if "munge" in out.stderr.lower() \
            or "contact slurm controller" in out.stderr.lower() else ""
        raise SlurmError(f"`{' '.join(args[:3])}` failed (exit {out.returncode}): "
                         f"{(out.stderr or out.stdout).strip()}{hint}")
    return out


@dataclass
class JobRun:
    """A submitted job as far as we followed it."""

    job_id: str
    run_dir: Path
    script: Path
    state: str = "SUBMITTED"
    exit_code: str = ""  # "code:signal" as Slurm reports it
    nodes: str = ""
    reason: str = ""
    restarts: int = 0
    timeline: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""  # where the final state came from: scontrol, sacct, sacct --completion, local
    where: str = "slurm"  # "slurm" or "local" (no Slurm: the same torchrun command on this machine)
    submitted: float = field(default_factory=time.monotonic)

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED"

    @property
    def log_path(self) -> Path:
        return self.run_dir / (f"slurm-{self.job_id}.out" if self.where == "slurm" else "local.out")

    def log(self, tail: int | None = None) -> str:
        """The job's output (all nodes); ``tail``: only the last lines."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-tail:]) if tail else text

    def results(self, tag: str | None = None) -> Any:
        """Every rank's result rows as one DataFrame (see ``smml_lib.distributed.job.read_results``)."""
        return read_results(self.run_dir, tag)

    def attempt_results(self, tag: str | None = None) -> list[Any]:
        """Results of every attempt, oldest first: interrupted ones (before a requeue), then the last one."""
        earlier = sorted(self.run_dir.glob("attempt*/results"), key=lambda p: int(p.parent.name[7:]))
        return [read_results(p.parent, tag) for p in earlier] + [self.results(tag)]

    def seconds_in(self, state: str) -> float:
        """Seconds spent in ``state`` (e.g. PENDING = queue wait), summed over the timeline."""
        total = 0.0
        for a, b in zip(self.timeline, self.timeline[1:]):
            total += (b["t_s"] - a["t_s"]) if a["state"] == state else 0.0
        return total

    @property
    def elapsed_s(self) -> float:
        return self.timeline[-1]["t_s"] if self.timeline else 0.0

    def frame(self) -> Any:
        return pd.DataFrame(self.timeline)


def parse_scontrol(text: str) -> dict[str, str]:
    """``scontrol show job -o`` output -> {key: value}."""
    return dict(re.findall(r"(\w[\w:/.]*)=(\S*)", text))


def job_info(job_id: str, env: dict[str, str] | None = None) -> tuple[dict[str, str], str]:
    """The job's fields and their source: ``scontrol`` while Slurm remembers it, else ``sacct``."""
    out = slurm_cmd(["scontrol", "show", "job", "-o", str(job_id)], env, check=False)
    if out.returncode == 0 and "JobState=" in out.stdout:
        return parse_scontrol(out.stdout), "scontrol"
    fmt = "JobID,State,ExitCode,NodeList"
    for extra, source in (([], "sacct"), (["--completion"], "sacct --completion")):
        acct = slurm_cmd(["sacct", *extra, "-j", str(job_id), "-X", "-n", "-P", f"--format={fmt}"], env, check=False)
        rows = [r.split("|") for r in acct.stdout.splitlines() if r.split("|")[0] == str(job_id)]
        if acct.returncode == 0 and rows:
            r = rows[-1]
            return {"JobId": r[0], "JobState": r[1].split()[0], "ExitCode": r[2], "NodeList": r[3]}, source
    raise SlurmError(f"job {job_id} is unknown to scontrol and sacct (purged, or another cluster's id?)")


def preempt(job_id: str, env: dict[str, str] | None = None) -> None:
    """Send the job's batch script SIGUSR1, exactly what ``--signal=B:USR1@N`` does before the time limit."""
    slurm_cmd(["scancel", "--signal=USR1", "--batch", str(job_id)], env)


def after_step(step: int) -> Callable[[str], bool]:
    """A ``preempt_when`` predicate: true once the log shows the worker finished ``step``."""
    pattern = re.compile(rf"\bstep\s+{step}/")
    return lambda log: bool(pattern.search(log))


def submit(job: TorchrunJob, cluster: Any = None, run_dir: Path | None = None, timeout_s: float = 30.0) -> JobRun:
    """Write the script and ``sbatch`` it; returns the ``JobRun`` to follow. ``SlurmError`` if refused."""
    env = cluster.env if cluster is not None else None
    if getattr(cluster, "kind", "") == "local" and "OMP_NUM_THREADS" not in job.env:
        # the local cluster's "nodes" share this machine's cores: one thread per process, or they fight
        threads = max(1, (os.cpu_count() or 1) // job.world_size)
        job = dataclasses.replace(job, env={**job.env, "OMP_NUM_THREADS": str(threads)})
    script = write_script(job, run_dir)
    out = slurm_cmd(["sbatch", "--parsable", str(script)], env, timeout_s)
    job_id = out.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch did not return a job id: {out.stdout.strip()} {out.stderr.strip()}")
    return JobRun(job_id, script.parent, script)


def follow(run: JobRun, cluster: Any = None, *, timeout_s: float = 300.0, poll_s: float = 0.25, echo: bool = True,
           preempt_when: Callable[[str], bool] | None = None, cancel_on_timeout: bool = True) -> JobRun:
    """Poll the job until it ends; record each state change in ``run.timeline`` (and print it).

    A requeued job waits in PENDING (reason ``BeginTime``) until its old job credential has expired
    (slurm.conf ``AuthInfo=cred_expire``: 120 s by default, 5 s on the local cluster).

    Args:
        preempt_when: called with the log while the first run is RUNNING; when true, ``preempt`` the job once.
        cancel_on_timeout: ``scancel`` a job still running at ``timeout_s`` (nothing keeps running behind a
            notebook), then raise ``SlurmError``.
    """
    env = cluster.env if cluster is not None else None
    preempted, last = False, None
    deadline = time.monotonic() + timeout_s
    while True:
        info, source = job_info(run.job_id, env)
        state = info.get("JobState", "UNKNOWN")
        run.state, run.source, run.exit_code = state, source, info.get("ExitCode", run.exit_code)
        run.nodes, run.reason = info.get("NodeList", run.nodes), info.get("Reason", "")
        run.restarts = int(info.get("Restarts", run.restarts) or 0)
        key = (state, run.reason if state == "PENDING" else "", run.restarts)
        if key != last:
            row = {"t_s": round(time.monotonic() - run.submitted, 2), "state": state, "reason": run.reason,
                   "nodes": run.nodes if state != "PENDING" else "", "restarts": run.restarts}
            run.timeline.append(row)
            if echo:
                extra = f"({run.reason})" if state == "PENDING" and run.reason not in ("", "None") else run.nodes
                print(f"  {row['t_s']:7.2f} s  job {run.job_id}  {state:<10} {extra}"
                      + (f"  restart {run.restarts}" if run.restarts else ""), flush=True)
            last = key
        if state in TERMINAL:
            return run
        if preempt_when and not preempted and state == "RUNNING" and run.restarts == 0 and preempt_when(run.log()):
            preempt(run.job_id, env)
            preempted = True
            if echo:
                print(f"  {time.monotonic() - run.submitted:7.2f} s  sent SIGUSR1 to the batch script (as Slurm "
                      "does before a time limit)", flush=True)
        if time.monotonic() > deadline:
            if cancel_on_timeout:
                slurm_cmd(["scancel", run.job_id], env, check=False)
            cancelled = " and was cancelled" if cancel_on_timeout else ""
            raise SlurmError(f"job {run.job_id} still {state} ({run.reason}) after {timeout_s:.0f} s{cancelled}. "
                             f"Last log lines:\n{run.log(15)}")
        time.sleep(poll_s)


def failure_text(run: JobRun) -> str:
    """Why a job failed: state, exit code, nodes, the failing rank (if a worker recorded it) and the log tail."""
    code, _, sig = run.exit_code.partition(":")
    head = f"job {run.job_id} ended {run.state} (exit code {code or '?'}" + (f", signal {sig}" if sig not in ("", "0")
                                                                              else "") + f") on {run.nodes or '?'}"
    tail = run.log(20).splitlines()
    if any(run.run_dir.glob("rank*.error.json")) or any(run.run_dir.glob("logs/**/error.json")):
        message = failure_message(run.run_dir, int(code) if code.isdigit() else None, tail)[0]
        return f"{head}: {message}\nlog: {run.log_path}"
    return f"{head}. Last lines of {run.log_path}:\n" + "\n".join(tail)


def submit_and_follow(job: TorchrunJob, cluster: Any = None, *, timeout_s: float = 300.0, check: bool = True,
                      echo: bool = True, run_dir: Path | None = None, **follow_kwargs: Any) -> JobRun:
    """Submit ``job`` to ``cluster`` and follow it to the end; raise ``JobFailed`` unless it COMPLETED.

    ``cluster``: a ``smml_lib.cluster.local_cluster.Cluster`` (its ``env`` points the Slurm commands at it); when it is
    unavailable, the same torchrun command runs on this machine instead (``where="local"``).
    """
    if cluster is not None and not cluster.available:
        return run_locally(job, reason=cluster.reason, timeout_s=timeout_s, check=check, echo=echo, run_dir=run_dir,
                           preempt_when=follow_kwargs.get("preempt_when"))
    run = submit(job, cluster, run_dir)
    if echo:
        print(f"submitted job {run.job_id}: {run.script}", flush=True)
    follow(run, cluster, timeout_s=timeout_s, echo=echo, **follow_kwargs)
    if check and not run.ok:
        raise JobFailed(failure_text(run), run)
    return run


def queue_frame(cluster: Any = None) -> Any:
    """``squeue`` as a DataFrame: job id, name, state, elapsed, nodes, node list or pending reason."""
    out = slurm_cmd(["squeue", "-h", "-o", "%i|%j|%T|%M|%D|%R"], cluster.env if cluster is not None else None)
    rows = [line.split("|") for line in out.stdout.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=["job_id", "name", "state", "elapsed", "nodes", "nodelist_or_reason"])


def nodes_frame(cluster: Any = None) -> Any:
    """``scontrol show nodes`` as a DataFrame: node, address, state, CPUs, GPUs (gres), partitions."""
    out = slurm_cmd(["scontrol", "show", "nodes", "-o"], cluster.env if cluster is not None else None)
    rows = []
    for line in out.stdout.splitlines():
        f = parse_scontrol(line)
        if f:
            rows.append({"node": f.get("NodeName"), "address": f.get("NodeAddr"), "state": f.get("State"),
                         "cpus": int(f.get("CPUTot", 0) or 0), "gres": f.get("Gres"),
                         "partitions": f.get("Partitions")})
    return pd.DataFrame(rows)


def run_locally(job: TorchrunJob, *, reason: str = "", timeout_s: float = 300.0, check: bool = True,
                echo: bool = True, run_dir: Path | None = None,
                preempt_when: Callable[[str], bool] | None = None) -> JobRun:
    """No Slurm here: run the same worker under torchrun on this machine, ``nodes x nproc`` processes on 1 node.

    The sbatch script is still written (it is what a cluster would run). A ``preempt_when`` drill sends
    SIGTERM to torchrun instead of SIGUSR1 to a batch script, and "requeues" by running the command again.
    """
    script = write_script(job, run_dir)
    run = JobRun("local", script.parent, script, where="local")
    if echo:
        print(f"No Slurm cluster here ({reason}).\nRunning the same worker on this machine instead: "
              f"{job.world_size} processes on 1 node (torchrun --standalone). A cluster would run {script}.",
              flush=True)
    lines: list[str] = []
    while True:
        run.timeline.append({"t_s": round(time.monotonic() - run.submitted, 2), "state": "RUNNING", "reason": "",
                             "nodes": "localhost", "restarts": run.restarts})
        args = [a.replace("${SMML_RUN_DIR}", str(run.run_dir)).replace("$SMML_RUN_DIR", str(run.run_dir))
                for a in job.args]  # what the job script's shell would expand
        handle = start(job.worker, args, nproc=job.world_size, timeout_s=timeout_s, env=dict(job.env),
                       run_dir=run.run_dir, echo=echo)
        done, sent = threading.Event(), []

        def watch() -> None:
            while not done.wait(0.2):
                if preempt_when("\n".join(list(handle.tail))):
                    sent.append(time.monotonic())
                    handle.stop(signal.SIGTERM)
                    return

        if preempt_when and run.restarts == 0:
            threading.Thread(target=watch, daemon=True).start()
        try:
            df = handle.wait()
        except LaunchError as exc:
            run.state, run.exit_code = "FAILED", f"{handle.proc.returncode}:0"
            lines += list(handle.tail)
            run.log_path.write_text("\n".join(lines) + "\n")
            run.timeline.append({"t_s": round(time.monotonic() - run.submitted, 2), "state": "FAILED",
                                 "reason": "", "nodes": "localhost", "restarts": run.restarts})
            if check:
                raise JobFailed(f"local run of {job.worker} failed: {exc}", run) from None
            return run
        finally:
            done.set()
        lines += list(handle.tail)
        if sent and df.attrs.get("stopped_early"):
            keep = run.run_dir / f"attempt{run.restarts}"  # as the sbatch script keeps an interrupted attempt's results
            keep.mkdir(parents=True, exist_ok=True)
            (run.run_dir / "results").rename(keep / "results")
            run.restarts += 1  # what --requeue does on a cluster: the same command again, resuming
            if echo:
                print("  workers stopped after a checkpoint: running the command again (as a requeue would)")
            continue
        break
    run.state, run.exit_code, run.nodes, run.source = "COMPLETED", "0:0", "localhost", "local"
    run.timeline.append({"t_s": round(time.monotonic() - run.submitted, 2), "state": "COMPLETED", "reason": "",
                         "nodes": "localhost", "restarts": run.restarts})
    run.log_path.write_text("\n".join(lines) + "\n")
    return run
