"""Run a worker module under ``torchrun`` from a notebook or the shell, and get one DataFrame back.

    df = launch("train", ["--strategy", "ddp", "--max-steps", "5"])   # all GPUs, or 2 CPU processes
    smml launch worker_train --nproc 2 -- --strategy fsdp                   # the same from a shell

What it does, and why a notebook should never ``mp.spawn`` its own functions (they cannot be pickled
from ``__main__``, and a crashed child hangs the kernel):

1. builds the torchrun command line (``torchrun_command``; Module 03's Slurm script uses the same
   function for multi-node jobs) and starts it in a **new process group**, with ``SMML_RUN_DIR``
   pointing at a fresh run folder and the backend chosen for the hardware (NCCL on GPUs, gloo on CPUs);
2. streams rank 0's output live into the notebook (all ranks' full logs land in ``<run>/logs``);
3. collects every rank's result JSON (``<run>/results``) into one DataFrame (``df.attrs`` holds the
   run folder, exit code and wall time);
4. when a rank crashes, raises ``WorkerFailed`` naming the rank, its host and the tail of its
   traceback (from the error file the worker wrote, else torchrun's per-rank error file or log);
   when the job outlives ``timeout_s``, kills it and raises ``LaunchTimeout``. Either way **no process
   is left behind**: the whole process group, every descendant seen while it ran, and any process still
   carrying this launch's ``SMML_LAUNCH_ID`` get SIGTERM, then SIGKILL after a grace period.

A worker that stopped cooperatively (SIGTERM, interruption notice; exit code 75, see
``smml_lib.checkpoint.sharded``) is not an error: the DataFrame comes back with ``stopped_early`` rows.
``start(...)`` returns a ``Job`` handle instead of waiting, for drills that stop a running job.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Sequence

GRACE_S = 5.0  # between SIGTERM and SIGKILL when the launcher ends a job
ERROR_GRACE_S = 3.0  # after a rank's error file appears, let torchrun end the job on its own this long


class LaunchError(RuntimeError):
    """A launched job did not finish normally."""


class WorkerFailed(LaunchError):
    """A rank raised or died. ``rank`` (global), ``host``, ``traceback`` (its tail) say which and why."""

    def __init__(self, message: str, rank: int | None = None, host: str | None = None, traceback: str = ""):
        super().__init__(message)
        self.rank, self.host, self.traceback = rank, host, traceback


class LaunchTimeout(LaunchError):
    """The job ran longer than ``timeout_s`` and was killed."""


def default_nproc() -> int:
    """All visible GPUs, or 2 CPU processes when there is none (smoke mode)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def resolve_backend(backend: str = "auto", nproc: int | None = None) -> str:
    """``auto`` -> ``nccl`` when there is a GPU for every process, else ``gloo``."""
    import torch

    if backend != "auto":
        return backend
    n = nproc or default_nproc()
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= n else "gloo"


WORKERS_PACKAGE = "smml_lib.distributed.workers"


def worker_module(worker: str) -> str:
    """``"train"`` -> ``"smml_lib.distributed.workers.train"`` (a course worker); a dotted module name is kept."""
    if "." in worker:
        return worker
    return f"{WORKERS_PACKAGE}.{worker}"


def torchrun_command(worker: str, args: Sequence[str] = (), *, nproc: int | None = None, nnodes: int = 1,
                     rdzv_endpoint: str | None = None, rdzv_id: str = "smml", log_dir: str | None = None,
                     stream_rank: int | None = 0, python: str | None = None, torchrun: str | None = None,
                     max_restarts: int = 0) -> list[str]:
    """The torchrun command line that runs ``worker`` (a module of smml_lib) with ``args``.

    Args:
        worker: ``"train"``, ``"train"`` or a full module name.
        nproc: processes per node (default: all GPUs, else 2).
        nnodes: number of nodes. With 1 and no ``rdzv_endpoint``: ``--standalone`` (a local rendezvous).
        rdzv_endpoint: ``host:port`` of the c10d rendezvous for multi-node jobs (node 0's address);
            every node runs the same command.
        rdzv_id: job id shared by all nodes of one job (e.g. ``$SLURM_JOB_ID``).
        log_dir: per-rank logs and error files (``--log-dir`` with ``--tee 3``); ``None``: no redirection.
        stream_rank: with ``log_dir``, the local rank whose output is echoed on the console (``None``: all).
        python: interpreter (default: this one, so the same environment runs the workers); ignored when
            ``torchrun`` is given (e.g. ``"torchrun"`` for a Slurm script).
    """
    nproc = nproc or default_nproc()
    cmd = [torchrun] if torchrun else [python or sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1 and not rdzv_endpoint:
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        if not rdzv_endpoint:
            raise ValueError("a multi-node job needs rdzv_endpoint='host:port' (node 0's address)")
        cmd += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint,
                "--rdzv-id", rdzv_id]
    cmd += ["--nproc-per-node", str(nproc), "--max-restarts", str(max_restarts)]
    if log_dir:
        cmd += ["--log-dir", str(log_dir), "--tee", "3"]
        if stream_rank is not None:
            cmd += ["--local-ranks-filter", str(stream_rank)]
    return cmd + ["-m", worker_module(worker), *map(str, args)]


def new_run_dir(worker: str) -> Path:
    from smml_lib.common.paths import output_dir

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return output_dir("runs", f"{stamp}-{worker_module(worker).rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:6]}")


def read_results(run_dir: str | os.PathLike, tag: str | None = None) -> Any:
    """All ranks' result rows in ``<run_dir>/results`` as one DataFrame.

    ``tag``: only files of that tag (e.g. ``"aux-p2p"``); ``None``: every tag except auxiliary ``aux-*`` ones.
    """
    import pandas as pd

    rows: list[dict] = []
    for f in sorted(Path(run_dir, "results").glob("rank*.json")):
        file_tag = f.stem.split("-", 1)[-1]
        if (tag is None and not file_tag.startswith("aux-")) or file_tag == tag:
            rows += json.loads(f.read_text())
    return pd.DataFrame(rows)


class Job:
    """A running torchrun job started by ``start``; ``wait()`` streams its output and returns the results."""

    def __init__(self, argv: list[str], run_dir: Path, env: dict[str, str], timeout_s: float, echo: bool):
        self.argv, self.run_dir, self.timeout_s, self.echo = argv, run_dir, timeout_s, echo
        self.launch_id = env["SMML_LAUNCH_ID"]
        self.started = time.monotonic()
        self.tail: deque[str] = deque(maxlen=200)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._seen: dict[int, float] = {}  # pid -> create_time of every descendant observed
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=run_dir, text=True, errors="replace")
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        for line in self.proc.stdout:  # the reader thread never prints: the notebook's main thread does
            self._lines.put(line)
        self._lines.put(None)

    def _pump(self, wait_s: float) -> None:
        try:
            line = self._lines.get(timeout=wait_s)
        except queue.Empty:
            return
        while line is not None:
            line = line.rstrip("\n")
            self.tail.append(line)
            if self.echo:
                print(line.replace("[default0]:", "", 1), flush=True)
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return

    def _track(self) -> None:
        import psutil

        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self._seen.setdefault(child.pid, child.create_time())
        except psutil.Error:
            pass

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Ask the job to stop: ``sig`` to torchrun, which forwards it to every worker (cooperative stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def leftovers(self) -> list[Any]:
        """Processes of this launch still alive: descendants seen while it ran, or tagged with its launch id."""
        import psutil

        alive = []
        for pid, created in self._seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        for p in psutil.process_iter(["pid"]):
            if p.pid in self._seen or p.pid == os.getpid():
                continue
            try:
                if p.environ().get("SMML_LAUNCH_ID") == self.launch_id and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        return alive

    def kill(self, grace_s: float = GRACE_S) -> None:
        """End the job and everything it started: SIGTERM, then SIGKILL after ``grace_s``."""
        import psutil

        self._track()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            procs = self.leftovers()
            for p in procs:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
            while time.monotonic() < deadline and (self.proc.poll() is None or self.leftovers()):
                self._pump(0.1)
            if self.proc.poll() is not None and not self.leftovers():
                break
        self.proc.wait(timeout=10)

    def wait(self, timeout_s: float | None = None) -> Any:
        """Stream output until the job ends; return the results DataFrame or raise ``LaunchError``."""
        deadline = self.started + (timeout_s or self.timeout_s)
        error_seen_at = None
        while self.proc.poll() is None:
            self._pump(0.2)
            self._track()
            if error_seen_at is None and any(self.run_dir.glob("rank*.error.json")):
                error_seen_at = time.monotonic()
            if error_seen_at and time.monotonic() - error_seen_at > ERROR_GRACE_S:
                self.kill()  # a rank failed; its peers may be stuck in a collective: do not wait for them
            elif time.monotonic() > deadline:
                before = list(self.tail)[-15:]  # what it printed before we killed it (not torchrun's shutdown noise)
                self.echo = False
                self.kill()
                raise LaunchTimeout(f"{self._name()} still running after {timeout_s or self.timeout_s:.0f} s: killed "
                                    f"(all processes of the job ended). Ranks without a result: "
                                    f"{self._missing_ranks() or 'none'}. Last output before the kill:\n" + "\n".join(before))
        self._drain()
        if self.leftovers():  # torchrun is gone; a worker outlived it (should not happen): end it
            self.kill()
        return self._collect()

    def _drain(self) -> None:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            self._pump(0.05)
            if self._lines.empty() and self.proc.poll() is not None:
                time.sleep(0.05)
                if self._lines.empty():
                    break

    def _name(self) -> str:
        return f"job {self.argv[self.argv.index('-m', 3) + 1] if '-m' in self.argv[3:] else ''} ({self.run_dir.name})"

    def _missing_ranks(self) -> list[int]:
        df = read_results(self.run_dir)
        n = self._world_size()
        return sorted(set(range(n)) - set(df["rank"] if "rank" in df else []))

    def _world_size(self) -> int:
        i = self.argv.index("--nproc-per-node")
        nnodes = int(self.argv[self.argv.index("--nnodes") + 1])
        return int(self.argv[i + 1]) * nnodes

    def _collect(self) -> Any:
        df = read_results(self.run_dir)
        rc = self.proc.returncode
        df.attrs.update(run_dir=str(self.run_dir), returncode=rc, wall_s=time.monotonic() - self.started,
                        command=" ".join(self.argv))
        stopped = "stopped_early" in df and len(df) and bool(df["stopped_early"].fillna(False).all())
        df.attrs["stopped_early"] = bool(stopped)
        if rc == 0 or (stopped and not any(self.run_dir.glob("rank*.error.json"))):
            return df
        message, rank, host, tb = failure_message(self.run_dir, rc, list(self.tail))
        raise WorkerFailed(f"{self._name()}: {message}", rank, host, tb)


def failure_message(run_dir: Path, returncode: int | None, tail: list[str]) -> tuple[str, int | None, str | None, str]:
    """Explain a failed job: ``(message, rank, host, traceback tail)`` of the rank that failed first.

    Sources, best first: the workers' own ``rank<N>.error.json`` (written by ``dist.run_worker``), torchrun's
    per-rank ``error.json`` under ``logs/``, and torchrun's "Root Cause" summary plus that rank's stderr log
    (a rank killed by a signal - e.g. the kernel's out-of-memory killer - leaves no traceback).
    """
    errors = [json.loads(f.read_text()) for f in run_dir.glob("rank*.error.json")]
    if errors:
        first = min(errors, key=lambda e: e["time"])
        others = sorted(e["rank"] for e in errors if e is not first)
        tb = "\n".join(first["traceback"].rstrip().splitlines()[-14:])
        also = f" (ranks {others} failed after it, usually as a consequence)" if others else ""
        return (f"rank {first['rank']} on {first['host']} failed: {first['type']}: {first['message']}{also}\n"
                f"--- traceback of rank {first['rank']} (last lines) ---\n{tb}", first["rank"], first["host"], tb)
    for f in sorted(run_dir.glob("logs/**/error.json")):
        data = json.loads(f.read_text()).get("message", {})
        if isinstance(data, dict):
            rank = int(f.parent.name) if f.parent.name.isdigit() else None
            tb = "\n".join(str(data.get("extraInfo", {}).get("py_callstack", "")).rstrip().splitlines()[-14:])
            return f"rank {rank} failed: {data.get('message')}\n{tb}", rank, None, tb
    text = "\n".join(tail)
    rank = None
    if "Root Cause" in text:
        root = text.split("Root Cause", 1)[1]
        for line in root.splitlines():
            if line.strip().startswith("rank") and ":" in line:
                digits = line.split(":", 1)[1].split()[0]
                rank = int(digits) if digits.isdigit() else None
                break
    log_tail = ""
    logs = sorted(run_dir.glob(f"logs/**/{rank if rank is not None else 0}/stderr.log"))
    if logs:
        log_tail = "\n".join(logs[-1].read_text(errors="replace").rstrip().splitlines()[-14:])
    if rank is None:
        return (f"torchrun exited with code {returncode} and no rank reported an error (a bad command line, or a rank "
                "killed by a signal, e.g. SIGKILL from the out-of-memory killer). Last output:\n" + "\n".join(tail[-14:]),
                None, None, "")
    return (f"rank {rank} ended without a Python traceback (exit code {returncode}: killed by a signal, e.g. SIGKILL "
            "from the out-of-memory killer?). Last output:\n" + (log_tail or "\n".join(tail[-14:])), rank, None, log_tail)


def start(worker: str, args: Sequence[str] = (), *, nproc: int | None = None, backend: str = "auto",
          timeout_s: float = 600.0, env: dict[str, str] | None = None, run_dir: str | os.PathLike | None = None,
          echo: bool = True, shutdown_timeout_s: int = 120) -> Job:
    """Start ``worker`` under torchrun without waiting (see ``launch``); returns a ``Job``."""
    nproc = nproc or default_nproc()
    folder = Path(run_dir) if run_dir else new_run_dir(worker)
    folder.mkdir(parents=True, exist_ok=True)
    backend = resolve_backend(backend, nproc)
    full_env = {**os.environ, "SMML_RUN_DIR": str(folder), "SMML_BACKEND": backend,
                "SMML_LAUNCH_ID": uuid.uuid4().hex, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(shutdown_timeout_s),
                # CPU smoke runs: one core per process, the analogue of one GPU per process (and no
                # OpenMP threads fighting over cores, which slows a loaded machine ten-fold)
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or
                                   ("1" if backend == "gloo" else str(max(1, (os.cpu_count() or 1) // nproc))),
                **(env or {})}
    if backend == "gloo" and "CUDA_VISIBLE_DEVICES" not in (env or {}):
        full_env.setdefault("CUDA_VISIBLE_DEVICES", "")
    argv = torchrun_command(worker, args, nproc=nproc, log_dir=str(folder / "logs"))
    (folder / "command.txt").write_text(" ".join(argv) + "\n")
    return Job(argv, folder, full_env, timeout_s, echo)


def launch(worker: str, args: Sequence[str] = (), *, nproc: int | None = None, backend: str = "auto",
           timeout_s: float = 600.0, env: dict[str, str] | None = None, run_dir: str | os.PathLike | None = None,
           echo: bool = True) -> Any:
    """Run ``torchrun -m smml_lib.<worker> args`` and return every rank's results as one DataFrame.

    Args:
        worker: ``"train"`` (or ``"train"``), ``"collectives"``, ``"tp"``...
        args: the worker's own flags, e.g. ``["--strategy", "fsdp", "--max-steps", "10"]``.
        nproc: processes (default: all GPUs; 2 CPU processes without GPUs).
        backend: ``"auto"`` (nccl on GPUs, gloo on CPUs), ``"nccl"``, ``"gloo"``.
        timeout_s: kill the whole job after this long and raise ``LaunchTimeout``.
        env: extra environment variables for the workers (e.g. ``{"NCCL_P2P_DISABLE": "1"}``).
        run_dir: where results and logs go (default: a new folder under ``<outputs>/runs``).
        echo: stream rank 0's output here.

    Raises:
        WorkerFailed: a rank crashed (the message names it and ends with its traceback).
        LaunchTimeout: the job hung or was too slow.
    """
    job = start(worker, args, nproc=nproc, backend=backend, timeout_s=timeout_s, env=env, run_dir=run_dir, echo=echo)
    try:
        return job.wait()
    except BaseException:
        if job.proc.poll() is None or job.leftovers():
            job.kill()  # KeyboardInterrupt in the notebook, or any error: leave nothing running
        raise


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml launch", description="Run a smml_lib worker under torchrun.",
                                epilog="example: smml launch worker_train --nproc 2 -- --strategy fsdp --max-steps 5")
    p.add_argument("worker", help="worker_train | worker_collectives | worker_tp | a module name")
    p.add_argument("--nproc", type=int, default=None)
    p.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"])
    p.add_argument("--timeout-s", type=float, default=3600)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--print-command", action="store_true", help="print the torchrun command and exit")
    p.add_argument("--nnodes", type=int, default=1, help="with --print-command: nodes of a multi-node job")
    p.add_argument("--rdzv-endpoint", default=None, help="with --print-command: host:port of node 0")
    own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    a = p.parse_args(own)  # the worker's own flags come after "--"
    if a.print_command:
        print(" ".join(torchrun_command(a.worker, rest, nproc=a.nproc, nnodes=a.nnodes, rdzv_endpoint=a.rdzv_endpoint,
                                        torchrun="torchrun" if a.nnodes > 1 else None)))
        return 0
    try:
        df = launch(a.worker, rest, nproc=a.nproc, backend=a.backend, timeout_s=a.timeout_s, run_dir=a.run_dir)
    except LaunchError as exc:
        print(f"smml launch: {exc}", file=sys.stderr)
        return 1
    cols = [c for c in df.columns if not isinstance(df[c].iloc[0], list)] if len(df) else []
    print(df[cols].to_string() if cols else "(no results)")
    print(f"results: {df.attrs['run_dir']}")
    return 0
