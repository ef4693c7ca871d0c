"""The local cluster's daemons: start them, know them by PID, stop exactly them, and leave nothing behind.

``smml_lib.cluster.local_cluster`` is the public face (``up``, ``ensure``, ``down``); this module does the
work behind it. Everything started is recorded in ``state.json`` under ``SMML_CLUSTER_DIR``: the PID and
start time of munged, slurmctld and each node's slurmd, so ``stop_daemons`` stops those processes and no
others (processes are never looked up by name). One start or stop at a time per machine (``state_lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from smml_lib.cluster.host import (
    BRIDGE,
    ClusterError,
    alive,
    create_network,
    daemons_from_pid_files,
    host_veth,
    link_names,
    netns_name,
    netns_names,
    node_names,
    processes_in_namespaces,
    record_daemon,
    remove_network,
    run_cmd,
    state_dir,
    stop_pids,
    which,
    write_slurm_conf,
)


@dataclass
class DownReport:
    stopped: list[str]  # daemons and processes stopped
    removed: list[str]  # interfaces and namespaces deleted
    leftovers: list[str]  # anything still there afterwards (should be empty)
    seconds: float

    @property
    def clean(self) -> bool:
        return not self.leftovers


@contextlib.contextmanager
def state_lock() -> Iterator[None]:
    """One up/down at a time on this machine (two notebooks starting the cluster at once)."""
    path = Path(str(state_dir()) + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_state() -> dict[str, Any] | None:
    """``state.json`` of the running (or half-started) cluster, or ``None``."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((state_dir() / "state.json").read_text())
    return None


def write_state(state: dict[str, Any]) -> None:
    """Write ``state.json`` atomically (a reader never sees half a file)."""
    path = state_dir() / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def healthy(state: dict[str, Any]) -> bool:
    """Every recorded daemon alive and every node idle (or busy) in ``sinfo``."""
    if not all(alive(d) for d in state.get("daemons", [])):
        return False
    try:
        out = run_cmd(["sinfo", "-h", "-N", "-o", "%N %t"], env={"SLURM_CONF": state["conf"]}, timeout_s=5)
    except ClusterError:
        return False
    states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
    return all(states.get(n, "").rstrip("*") in ("idle", "mix", "alloc", "comp") for n in state["nodes"])


def start_daemons(nodes: list[str], cpus: int, timeout_s: float) -> dict[str, Any]:
    """Start munged, the network, slurmctld and one slurmd per node; wait until every node is idle.

    Returns the recorded state (``conf``, ``nodes``, ``daemons`` with PIDs and start times). Raises
    ``ClusterError`` with the end of the daemons' logs when something does not come up in time.
    """
    d = state_dir()
    for sub in ("state", "spool", "run"):
        shutil.rmtree(d / sub, ignore_errors=True)
    for sub in ["munge", "state", "log", "run", *[f"spool/{n}" for n in nodes]]:
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "munge").chmod(0o755)  # munged: the socket's folder must be searchable by all
    key = d / "munge" / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
    conf = write_slurm_conf(d, nodes, cpus)
    state: dict[str, Any] = {"conf": str(conf), "nodes": nodes, "daemons": [], "started_utc": time.time()}
    write_state(state)
    env = {"SLURM_CONF": str(conf)}
    log = open(d / "log" / "daemons.out", "ab")  # daemons inherit it, never a pipe

    def start(name: str, cmd: list[str], pid_file: Path) -> None:
        exe = which(cmd[0]) or cmd[0]
        subprocess.run([exe, *cmd[1:]], stdout=log, stderr=log, stdin=subprocess.DEVNULL, timeout=20, check=True,
                       env={**os.environ, **env})
        state["daemons"].append(record_daemon(name, pid_file))
        write_state(state)

    try:
        munge = d / "munge"
        start("munged", ["munged", f"--socket={munge / 'munge.socket'}", f"--key-file={key}",
                         f"--log-file={d / 'log' / 'munged.log'}", f"--pid-file={d / 'run' / 'munged.pid'}",
                         f"--seed-file={munge / 'munged.seed'}"], d / "run" / "munged.pid")
        state["network"] = True
        write_state(state)
        create_network(nodes)
        start("slurmctld", ["slurmctld", "-f", str(conf)], d / "run" / "slurmctld.pid")
        for n in nodes:  # nsenter --net only: `ip netns exec` would remount /sys and slurmd fails on cgroups
            # own UTS namespace too: processes on node1 see the host name "node1", as on a real cluster
            start(f"slurmd {n}", ["nsenter", f"--net=/var/run/netns/{netns_name(n)}", "unshare", "--uts", "sh", "-c",
                                  f'hostname {n} && exec slurmd -f "$0" -N {n}', str(conf)],
                  d / "run" / f"slurmd-{n}.pid")
    except subprocess.CalledProcessError as exc:
        raise ClusterError(f"{exc.cmd[0]} exited with {exc.returncode}: {log_tail(d)}") from None
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{exc.cmd[0]} did not return within 20 s: {log_tail(d)}") from None
    finally:
        log.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(state):
            return state
        time.sleep(0.2)
    raise ClusterError(f"the nodes did not become idle within {timeout_s:.0f} s: {log_tail(d)}")


def log_tail(d: Path, lines: int = 4) -> str:
    """The last lines of each daemon log: what an error message shows when a start fails."""
    parts = []
    for f in sorted((d / "log").glob("*.log")):
        tail = f.read_text(errors="replace").strip().splitlines()[-lines:]
        if tail:
            parts.append(f"--- {f.name} ---\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no logs in {d / 'log'})"


def stop_daemons(timeout_s: float = 30.0, quiet: bool = False) -> DownReport:
    """Stop everything ``start_daemons`` started, by recorded PID, and remove the network; check nothing is left."""
    t0 = time.monotonic()
    state = read_state() or {}
    nodes = state.get("nodes") or node_names(2)
    daemons = state.get("daemons", [])
    daemons = daemons + daemons_from_pid_files(state_dir() / "run", daemons)  # a start that failed half-way
    env = {"SLURM_CONF": state["conf"]} if state.get("conf") else {}
    stopped: list[str] = []
    ctld = [d for d in daemons if d["name"] == "slurmctld" and alive(d)]
    if ctld:
        with contextlib.suppress(ClusterError):  # 1. jobs first, so their steps end cleanly
            ids = run_cmd(["squeue", "-h", "-o", "%i"], env=env, timeout_s=5).stdout.split()
            if ids:
                run_cmd(["scancel", *ids], env=env, timeout_s=10)
                stopped.append(f"jobs {', '.join(ids)}")
                end = time.monotonic() + min(15.0, timeout_s / 2)
                squeue = ["squeue", "-h", "-o", "%i"]
                while time.monotonic() < end and run_cmd(squeue, env=env, timeout_s=5).stdout.strip():
                    time.sleep(0.2)
        with contextlib.suppress(ClusterError):  # 2. controller and node daemons
            run_cmd(["scontrol", "shutdown"], env=env, timeout_s=10)
        end = time.monotonic() + 10
        while time.monotonic() < end and any(alive(d) for d in daemons if d["name"] != "munged"):
            time.sleep(0.1)
    slurm = [d for d in daemons if d["name"] != "munged"]
    killed = stop_pids([d["pid"] for d in slurm if alive(d)], 5.0)
    stopped += [f"{d['name']} (pid {d['pid']})" for d in slurm]
    leftovers_ns = processes_in_namespaces(nodes)  # 3. job processes still inside our namespaces
    if leftovers_ns:
        stop_pids(leftovers_ns, 5.0)
        stopped.append(f"{len(leftovers_ns)} process(es) left in the node namespaces")
    for d in daemons:  # 4. munged last: slurm needs it to shut down
        if d["name"] == "munged":
            if alive(d):
                stop_pids([d["pid"]], 5.0)
            stopped.append(f"munged (pid {d['pid']})")
    removed = remove_network(nodes)
    for sub in ("state", "spool", "run"):
        shutil.rmtree(state_dir() / sub, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (state_dir() / "state.json").unlink()
    left = leftovers(nodes, daemons)
    if killed:
        stopped.append(f"killed (did not stop in time): {killed}")
    report = DownReport(stopped, removed, left, time.monotonic() - t0)
    if left and not quiet:
        raise ClusterError(f"after down, still present: {left}")
    return report


def leftovers(nodes: list[str], daemons: list[dict[str, Any]]) -> list[str]:
    """What of ours is still there: live recorded daemons, our interfaces and namespaces."""
    left = [f"{d['name']} (pid {d['pid']})" for d in daemons if alive(d)]
    if which("ip") is not None:
        deadline = time.monotonic() + 5
        while True:
            ours = {host_veth(n) for n in nodes} | {BRIDGE}
            names = sorted((link_names() & ours) | (netns_names() & {netns_name(n) for n in nodes}))
            if not names or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        left += names
    return left
