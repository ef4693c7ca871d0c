"""A real two-node Slurm cluster on this machine: ``smml cluster up | status | down``.

Module 03 teaches multi-node jobs on the course's 2 x g6.12xlarge Slurm cluster. Everywhere else (a
laptop VM, CI) the same sbatch scripts run against this local cluster: Debian's real ``slurmctld``,
``slurmd`` and ``munged``, with each node living in its own **network namespace** - its own network
stack and address, joined to the others through a virtual switch (a Linux bridge). Traffic between
"nodes" really crosses an interface, so ``tc`` can slow that link down to a stated bandwidth and the
cost of crossing the network becomes visible.

    root namespace                         smml-node1 (10.213.0.11)   smml-node2 (10.213.0.12)
    slurmctld, munged                      slurmd -N node1            slurmd -N node2
    bridge smml-br0 10.213.0.1/24 --veth-- smml0                     smml0
                                  --veth-------------------------------'

What it needs: Linux, root (namespaces, interfaces and Slurm's daemons), and the packages
``slurmctld slurmd slurm-client munge iproute2`` (``scripts/course.sh setup`` installs them as root).
Without them ``ensure()`` returns an unavailable cluster with the reason, and the labs fall back to
running the same torchrun job on this one machine.

Everything the cluster is lives under one folder (``SMML_CLUSTER_DIR``, default ``/tmp/smml-cluster``):
its own munge key and socket, ``slurm.conf`` (non-default ports, so a real Slurm on the machine is left
alone), state, spool, logs, and ``state.json`` with the PID (and start time) of every daemon started.
``down()`` stops exactly those: jobs first (``scancel``), then ``scontrol shutdown``, then any process
still inside our namespaces, then munged by its PID; then it deletes our interfaces and namespaces and
checks that nothing is left. Processes are never looked up by name. Addresses are private
(10.213.0.0/24) and exist only on interfaces this module creates.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from smml_lib.cluster.host import (  # noqa: F401 - SUBNET, preflight... are part of this module's API
    BRIDGE, INSTALL_HINT, NODE_IFNAME, PACKAGES, SUBNET, ClusterError, alive, daemons_from_pid_files, link_names,
    netns_names, record_daemon,
    remove_network, stop_pids, create_network, which, host_veth, netns_name, node_addr, node_names,
    preflight, processes_in_namespaces, run_cmd, state_dir, write_slurm_conf)


# --- the cluster object -------------------------------------------------------------------------------

@dataclass
class Cluster:
    """A Slurm cluster the labs submit to: the local one, an existing (real) one, or none (with why)."""

    kind: str  # "local", "existing" or "none"
    reason: str = ""  # why it is unavailable (kind "none"), or how it was found
    conf: Path | None = None  # slurm.conf of the local cluster (SLURM_CONF); None = the system's
    nodes: list[str] = field(default_factory=list)
    addrs: dict[str, str] = field(default_factory=dict)
    ifname: str | None = None  # the nodes' interface for GLOO/NCCL_SOCKET_IFNAME (None: detect per node)
    started_here: bool = False
    up_s: float = 0.0  # how long starting it took (0 when reused)
    released: "DownReport | None" = None

    @property
    def available(self) -> bool:
        return self.kind != "none"

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm commands (sbatch, squeue...) that talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)} if self.conf else {}

    def release(self) -> "DownReport | None":
        """Stop the local cluster if this process started it (labs end with this); else leave it running.

        Calling it again returns the first call's report (a re-run cell sees the same answer).
        """
        if self.kind == "local" and self.started_here:
            self.started_here = False
            self.released = down()
            _OWNED.clear()
        return self.released

    def link_limit(self, rate_mbit: float | None) -> Any:
        """``with cluster.link_limit(1000):`` limits the node links of the local cluster (``tc``); on a real
        cluster (or none) it changes nothing: the network is what the instances have."""
        if self.kind == "local" and rate_mbit:
            return link_limit(rate_mbit)
        return contextlib.nullcontext([])

    def describe(self) -> str:
        if not self.available:
            return f"no Slurm cluster: {self.reason}"
        where = ", ".join(f"{n} ({self.addrs[n]})" if n in self.addrs else n for n in self.nodes)
        how = f"started in {self.up_s:.1f} s" if self.started_here else "already running"
        return f"{self.kind} Slurm cluster, nodes {where}; {how}"


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
def _lock() -> Iterator[None]:
    """One up/down at a time on this machine (two notebooks starting the cluster at once)."""
    path = Path(str(state_dir()) + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_state() -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((state_dir() / "state.json").read_text())
    return None


def _write_state(state: dict[str, Any]) -> None:
    path = state_dir() / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def _cluster_from_state(state: dict[str, Any], *, started_here: bool = False, up_s: float = 0.0) -> Cluster:
    nodes = state["nodes"]
    return Cluster("local", "local cluster (network namespaces)", Path(state["conf"]), nodes,
                   {n: node_addr(n) for n in nodes}, NODE_IFNAME, started_here, up_s)


def _healthy(state: dict[str, Any]) -> bool:
    if not all(alive(d) for d in state.get("daemons", [])):
        return False
    try:
        out = run_cmd(["sinfo", "-h", "-N", "-o", "%N %t"], env={"SLURM_CONF": state["conf"]}, timeout_s=5)
    except ClusterError:
        return False
    states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
    return all(states.get(n, "").rstrip("*") in ("idle", "mix", "alloc", "comp") for n in state["nodes"])


def up(*, num_nodes: int = 2, cpus_per_node: int | None = None, timeout_s: float = 60.0) -> Cluster:
    """Start the local cluster (or return the running one). Raises ``ClusterError`` with the fix.

    Args:
        num_nodes: network-namespace hosts (2 for the labs).
        cpus_per_node: CPUs each node declares (default: this machine's count; nodes share them).
        timeout_s: give up (and clean up) if the nodes are not idle by then.
    """
    problems = preflight()
    if problems:
        raise ClusterError("cannot start the local Slurm cluster: " + "; ".join(problems))
    with _lock():
        state = _read_state()
        if state and _healthy(state):
            return _cluster_from_state(state)
        _down_locked(quiet=True)  # stale leftovers of a crashed run
        t0 = time.monotonic()
        try:
            cluster = _up_locked(node_names(num_nodes), cpus_per_node or os.cpu_count() or 1, timeout_s)
        except BaseException:
            _down_locked(quiet=True)
            raise
        cluster.up_s = time.monotonic() - t0
        return cluster


def _up_locked(nodes: list[str], cpus: int, timeout_s: float) -> Cluster:
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
    _write_state(state)
    env = {"SLURM_CONF": str(conf)}
    log = open(d / "log" / "daemons.out", "ab")  # noqa: SIM115 - daemons inherit it, never a pipe

    def start(name: str, cmd: list[str], pid_file: Path) -> None:
        exe = which(cmd[0]) or cmd[0]
        subprocess.run([exe, *cmd[1:]], stdout=log, stderr=log, stdin=subprocess.DEVNULL, timeout=20, check=True,
                       env={**os.environ, **env})
        state["daemons"].append(record_daemon(name, pid_file))
        _write_state(state)

    try:
        munge = d / "munge"
        start("munged", ["munged", f"--socket={munge / 'munge.socket'}", f"--key-file={key}",
                         f"--log-file={d / 'log' / 'munged.log'}", f"--pid-file={d / 'run' / 'munged.pid'}",
                         f"--seed-file={munge / 'munged.seed'}"], d / "run" / "munged.pid")
        state["network"] = True
        _write_state(state)
        create_network(nodes)
        start("slurmctld", ["slurmctld", "-f", str(conf)], d / "run" / "slurmctld.pid")
        for n in nodes:  # nsenter --net only: `ip netns exec` would remount /sys and slurmd fails on cgroups
            # own UTS namespace too: processes on node1 see the host name "node1", as on a real cluster
            start(f"slurmd {n}", ["nsenter", f"--net=/var/run/netns/{netns_name(n)}", "unshare", "--uts", "sh", "-c",
                                  f'hostname {n} && exec slurmd -f "$0" -N {n}', str(conf)],
                  d / "run" / f"slurmd-{n}.pid")
    except subprocess.CalledProcessError as exc:
        raise ClusterError(f"{exc.cmd[0]} exited with {exc.returncode}: {_log_tail(d)}") from None
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{exc.cmd[0]} did not return within 20 s: {_log_tail(d)}") from None
    finally:
        log.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _healthy(state):
            return _cluster_from_state(state, started_here=True)
        time.sleep(0.2)
    raise ClusterError(f"the nodes did not become idle within {timeout_s:.0f} s: {_log_tail(d)}")


def _log_tail(d: Path, lines: int = 4) -> str:
    parts = []
    for f in sorted((d / "log").glob("*.log")):
        tail = f.read_text(errors="replace").strip().splitlines()[-lines:]
        if tail:
            parts.append(f"--- {f.name} ---\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no logs in {d / 'log'})"


def ensure(kind: str = "auto", *, stop_at_exit: bool = True) -> Cluster:
    """The cluster a lab submits to; never raises (a notebook cell must run everywhere).

    Args:
        kind: ``"auto"``: an existing Slurm if one answers (the course cluster), else the local one;
            ``"existing"`` or ``"local"`` to force one.
        stop_at_exit: if this call starts the local cluster, stop it when this Python process exits
            (the lab also stops it explicitly in its last step).

    Returns:
        A ``Cluster``; ``available`` is False when neither works, with ``reason`` saying why.
    """
    if kind not in ("auto", "existing", "local"):
        raise ValueError(f"kind={kind!r}: use auto, existing or local")
    if kind in ("auto", "existing"):
        found = existing()
        if found.available or kind == "existing":
            return found
    try:
        cluster = up()
    except ClusterError as exc:
        return Cluster("none", str(exc))
    started = (_read_state() or {}).get("started_utc")
    if cluster.started_here:
        _OWNED["started_utc"] = started
        if stop_at_exit and not _OWNED.get("atexit"):
            atexit.register(_stop_at_exit)
            _OWNED["atexit"] = True
    elif started is not None and started == _OWNED.get("started_utc"):
        cluster.started_here = True  # this process started it in an earlier call (a cell run twice)
    return cluster


_OWNED: dict[str, Any] = {}  # the cluster this process started (its state's started_utc)


def _stop_at_exit() -> None:
    """At interpreter exit, stop the cluster this process started, from a detached process: a notebook
    kernel can be killed a moment after its exit handlers begin, and a half-done teardown helps nobody."""
    state = _read_state()
    if not state or state.get("started_utc") != _OWNED.get("started_utc"):
        return
    subprocess.Popen([sys.executable, "-c", "from smml_lib.cluster.local_cluster import cli; cli(['down'])"],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)


def existing(timeout_s: float = 5.0) -> Cluster:
    """An already configured Slurm (the course cluster's login node): ``scontrol ping`` answers."""
    if which("sinfo") is None:
        return Cluster("none", f"no Slurm client on this machine ({INSTALL_HINT})")
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"} if _is_local_conf() else None
    try:
        ping = subprocess.run([which("scontrol") or "scontrol", "ping"], capture_output=True, text=True,
                              timeout=timeout_s, env=env, stdin=subprocess.DEVNULL)
        if ping.returncode != 0 or "UP" not in ping.stdout:
            return Cluster("none", "no Slurm controller answers `scontrol ping` with the system configuration")
        out = subprocess.run([which("sinfo") or "sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True,
                             timeout=timeout_s, env=env, stdin=subprocess.DEVNULL)
    except (subprocess.TimeoutExpired, OSError) as exc:
        return Cluster("none", f"Slurm did not answer ({type(exc).__name__})")
    nodes = sorted(set(out.stdout.split()))
    return Cluster("existing", "the system's Slurm (scontrol ping: UP)", None, nodes)


def _is_local_conf() -> bool:
    return os.environ.get("SLURM_CONF", "").startswith(str(state_dir()))


# --- status, link limits, down ------------------------------------------------------------------------

def status() -> dict[str, Any]:
    """What is running: nodes (from sinfo), daemons (by recorded PID), interfaces and link limits."""
    state = _read_state()
    info: dict[str, Any] = {"up": False, "state_dir": str(state_dir()), "daemons": [], "nodes": [], "links": {}}
    if not state:
        return info
    info["daemons"] = [{**d, "alive": alive(d)} for d in state.get("daemons", [])]
    with contextlib.suppress(ClusterError):
        out = run_cmd(["sinfo", "-h", "-N", "-o", "%N %t %c %O"], env={"SLURM_CONF": state["conf"]}, timeout_s=5)
        info["nodes"] = [dict(zip(("node", "state", "cpus", "load"), line.split())) for line in out.stdout.splitlines()]
    for n in state["nodes"]:
        with contextlib.suppress(ClusterError):
            q = run_cmd(["tc", "qdisc", "show", "dev", host_veth(n)], timeout_s=5)
            info["links"][host_veth(n)] = q.stdout.strip().splitlines()[0] if q.stdout.strip() else ""
    info["up"] = _healthy(state)
    info["conf"] = state["conf"]
    return info


def set_link_limit(rate_mbit: float | None, *, burst_kb: int | None = None) -> list[str]:
    """Limit every node's link to ``rate_mbit`` Mbit/s in each direction with a token bucket (``tc tbf``).

    The qdisc sits on the bridge side of each node's veth, so it shapes all traffic *into* that node:
    node-to-node traffic crosses exactly one limited link. Loopback traffic inside a node is unaffected.
    ``None`` removes the limits. Returns the ``tc`` commands run.
    """
    state = _read_state()
    if not state:
        raise ClusterError("the local cluster is not running (smml cluster up)")
    cmds = []
    for n in state["nodes"]:
        dev = host_veth(n)
        if rate_mbit is None:
            cmd = ["tc", "qdisc", "del", "dev", dev, "root"]
            run_cmd(cmd, check=False)
        else:
            # burst: at least 10 ms of traffic and one 64 KiB GSO segment (veth passes large segments)
            burst = burst_kb or max(64, int(rate_mbit * 1e6 / 8 / 100 / 1024))
            cmd = ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate_mbit}mbit",
                   "burst", f"{burst}kb", "latency", "200ms"]
            run_cmd(cmd, what="tc (traffic control, from iproute2)")
        cmds.append(" ".join(cmd))
    return cmds


@contextlib.contextmanager
def link_limit(rate_mbit: float) -> Iterator[list[str]]:
    """``with link_limit(1000): ...`` - the node links are limited inside the block, restored after."""
    cmds = set_link_limit(rate_mbit)
    try:
        yield cmds
    finally:
        set_link_limit(None)


def down(timeout_s: float = 30.0) -> DownReport:
    """Stop the local cluster and remove everything it created; verifies that nothing is left."""
    with _lock():
        return _down_locked(timeout_s=timeout_s)


def _down_locked(timeout_s: float = 30.0, quiet: bool = False) -> DownReport:
    t0 = time.monotonic()
    state = _read_state() or {}
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
                while time.monotonic() < end and run_cmd(["squeue", "-h", "-o", "%i"], env=env, timeout_s=5).stdout.strip():
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
    leftovers = _leftovers(nodes, daemons)
    if killed:
        stopped.append(f"killed (did not stop in time): {killed}")
    report = DownReport(stopped, removed, leftovers, time.monotonic() - t0)
    if leftovers and not quiet:
        raise ClusterError(f"after down, still present: {leftovers}")
    return report


def _leftovers(nodes: list[str], daemons: list[dict[str, Any]]) -> list[str]:
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


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml cluster", description="A real two-node Slurm cluster on this machine "
                                "(network namespaces). Needs root and: " + PACKAGES)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start it (or report the running one)")
    sub.add_parser("status", help="nodes, daemons, link limits")
    sub.add_parser("down", help="stop it and remove everything it created")
    lim = sub.add_parser("limit", help="limit the node links: smml cluster limit 1000 (Mbit/s), or 'off'")
    lim.add_argument("rate", help="Mbit/s or 'off'")
    a = p.parse_args(argv)
    try:
        if a.cmd == "up":
            c = up()
            print(c.describe())
            print(f"use it from a shell: export SLURM_CONF={c.conf}; sinfo")
        elif a.cmd == "status":
            s = status()
            print(json.dumps(s, indent=1, default=str))
            return 0 if s["up"] else 3
        elif a.cmd == "limit":
            for cmd in set_link_limit(None if a.rate == "off" else float(a.rate)):
                print(cmd)
        else:
            r = down()
            print(f"stopped: {', '.join(r.stopped) or 'nothing was running'}")
            print(f"removed: {', '.join(r.removed) or 'nothing'}  ({r.seconds:.1f} s; nothing left behind)")
    except ClusterError as exc:
        print(f"smml cluster {a.cmd}: {exc}", file=sys.stderr)
        return 1
    return 0
