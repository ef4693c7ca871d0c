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
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from smml_lib.cluster.daemons import DownReport, healthy, read_state, start_daemons, state_lock, stop_daemons
from smml_lib.cluster.host import (
    INSTALL_HINT,
    NODE_IFNAME,
    PACKAGES,
    ClusterError,
    alive,
    host_veth,
    node_addr,
    node_names,
    preflight,
    run_cmd,
    state_dir,
    which,
)

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


def _cluster_from_state(state: dict[str, Any], *, started_here: bool = False, up_s: float = 0.0) -> Cluster:
    nodes = state["nodes"]
    return Cluster("local", "local cluster (network namespaces)", Path(state["conf"]), nodes,
                   {n: node_addr(n) for n in nodes}, NODE_IFNAME, started_here, up_s)


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
    with state_lock():
        state = read_state()
        if state and healthy(state):
            return _cluster_from_state(state)
        stop_daemons(quiet=True)  # stale leftovers of a crashed run
        t0 = time.monotonic()
        try:
            state = start_daemons(node_names(num_nodes), cpus_per_node or os.cpu_count() or 1, timeout_s)
        except BaseException:
            stop_daemons(quiet=True)
            raise
        return _cluster_from_state(state, started_here=True, up_s=time.monotonic() - t0)


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
    started = (read_state() or {}).get("started_utc")
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
    state = read_state()
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
    state = read_state()
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
    info["up"] = healthy(state)
    info["conf"] = state["conf"]
    return info


def set_link_limit(rate_mbit: float | None, *, burst_kb: int | None = None) -> list[str]:
    """Limit every node's link to ``rate_mbit`` Mbit/s in each direction with a token bucket (``tc tbf``).

    The qdisc sits on the bridge side of each node's veth, so it shapes all traffic *into* that node:
    node-to-node traffic crosses exactly one limited link. Loopback traffic inside a node is unaffected.
    ``None`` removes the limits. Returns the ``tc`` commands run.
    """
    state = read_state()
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
    with state_lock():
        return stop_daemons(timeout_s=timeout_s)


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
