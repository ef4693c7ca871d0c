"""A running torchrun job: its output streamed, its ranks' results collected, its failure explained.

``smml_lib.distributed.launcher.start`` returns a ``Job``; ``Job.wait()`` returns every rank's result rows as
one DataFrame, or raises ``WorkerFailed`` naming the rank that failed (with its traceback) or
``LaunchTimeout``. Whatever happens, ``kill()`` leaves no process behind: the job's process group, every
descendant seen while it ran, and any process still carrying its ``SMML_LAUNCH_ID``.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

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


def read_results(run_dir: str | os.PathLike, tag: str | None = None) -> Any:
    """All ranks' result rows in ``<run_dir>/results`` as one DataFrame.

    ``tag``: only files of that tag (e.g. ``"aux-p2p"``); ``None``: every tag except auxiliary ``aux-*`` ones.
    """
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
                                    f"{self._missing_ranks() or 'none'}. Last output before the kill:\n"
                                    + "\n".join(before))
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
                "killed by a signal, e.g. SIGKILL from the out-of-memory killer). Last output:\n"
                + "\n".join(tail[-14:]),
                None, None, "")
    return (f"rank {rank} ended without a Python traceback (exit code {returncode}: killed by a signal, e.g. SIGKILL "
            "from the out-of-memory killer?). Last output:\n" + (log_tail or "\n".join(tail[-14:])),
            rank, None, log_tail)
