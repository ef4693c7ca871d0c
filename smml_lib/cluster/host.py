"""The host side of the local cluster: commands, processes, network namespaces and slurm.conf.

``smml_lib.cluster.local_cluster`` decides *what* happens (up, status, down); this module does it on the machine:
runs every command with a timeout (``run_cmd``), tracks daemons by PID and kernel start time (never by
name), finds the processes living in our namespaces, creates and removes the bridge, veth pairs and
namespaces, and writes the cluster's ``slurm.conf``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SUBNET = "10.213.0"  # /24; .1 is the bridge (slurmctld), .11, .12 ... the nodes
BRIDGE = "smml-br0"
NODE_IFNAME = "smml0"  # the interface name inside every node namespace (GLOO/NCCL_SOCKET_IFNAME)
CTLD_PORT, SLURMD_PORT = 6917, 6918  # not Slurm's defaults (6817/6818): never clash with a real Slurm
NEEDED = ("slurmctld", "slurmd", "munged", "scontrol", "sbatch", "squeue", "sinfo", "scancel", "ip", "nsenter",
          "unshare")
PACKAGES = "slurmctld slurmd slurm-client munge iproute2"
INSTALL_HINT = f"apt-get update && apt-get install -y {PACKAGES}  (or: sudo bash scripts/course.sh setup)"


class ClusterError(RuntimeError):
    """The local cluster could not be started, queried or stopped; the message says why and what to do."""


def state_dir() -> Path:
    return Path(os.environ.get("SMML_CLUSTER_DIR") or "/tmp/smml-cluster")


def node_names(num_nodes: int = 2) -> list[str]:
    return [f"node{i}" for i in range(1, num_nodes + 1)]


def netns_name(node: str) -> str:
    return f"smml-{node}"


def host_veth(node: str) -> str:
    return f"smml-h{node.removeprefix('node')}"


def node_addr(node: str) -> str:
    return f"{SUBNET}.{10 + int(node.removeprefix('node'))}"


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def run_cmd(cmd: list[str], *, timeout_s: float = 15.0, env: dict[str, str] | None = None, check: bool = True,
            what: str = "") -> subprocess.CompletedProcess:
    """Run a command with a timeout (never hangs); on failure raise ``ClusterError`` with its stderr."""
    exe = which(cmd[0]) or cmd[0]
    try:
        out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout_s,
                             env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{what or ' '.join(cmd)}: no answer within {timeout_s:.0f} s") from None
    except FileNotFoundError:
        raise ClusterError(f"{cmd[0]} is not installed: {INSTALL_HINT}") from None
    if check and out.returncode != 0:
        msg = (out.stderr or out.stdout).strip()
        raise ClusterError(f"{what or ' '.join(cmd)} failed (exit {out.returncode}): {msg}")
    return out


def preflight() -> list[str]:
    """What stops a local cluster from starting here, each with its fix (empty list: ready)."""
    problems = []
    if sys.platform != "linux":
        problems.append(f"the local cluster needs Linux network namespaces (this is {sys.platform}); use a Linux "
                        "VM or the course's cluster")
    elif os.geteuid() != 0:
        problems.append("the local cluster needs root (network namespaces, interfaces, Slurm daemons): run "
                        "`sudo smml cluster up` in a terminal, or run the lab as root")
    missing = [n for n in NEEDED if which(n) is None]
    if missing:
        problems.append(f"missing programs {', '.join(missing)}: {INSTALL_HINT}")
    return problems


def _start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (clock ticks since boot), or None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def alive(rec: dict[str, Any]) -> bool:
    return _start_time(rec["pid"]) == rec["start"]


def record_daemon(name: str, pid_file: Path, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, IndexError):  # IndexError: the daemon is still writing it
            pid = int(pid_file.read_text().split()[0])
            start = _start_time(pid)
            if start is not None:
                return {"name": name, "pid": pid, "start": start}
        time.sleep(0.05)
    raise ClusterError(f"{name} did not start (no live PID in {pid_file} after {timeout_s:.0f} s); see the logs in "
                       f"{state_dir() / 'log'}")


def daemons_from_pid_files(run_dir: Path, known: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Live munged/slurmctld/slurmd processes named by pid files in ``run_dir`` but missing from ``known``.

    A start that failed half-way (a daemon running, its record not yet written) must still be stopped.
    """
    found = []
    for pid_file in sorted(run_dir.glob("*.pid")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().split()[0])
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            start = _start_time(pid)
            if comm in ("munged", "slurmctld", "slurmd") and start is not None and not any(
                    d["pid"] == pid and d["start"] == start for d in known):
                found.append({"name": comm if comm != "slurmd" else f"slurmd ({pid_file.stem})", "pid": pid,
                              "start": start})
    return found


def _netns_inode(node: str) -> int | None:
    with contextlib.suppress(OSError):
        return os.stat(f"/var/run/netns/{netns_name(node)}").st_ino
    return None


def processes_in_namespaces(nodes: list[str]) -> list[int]:
    """PIDs of live processes inside our node namespaces (job steps, workers, slurmd): ours by construction."""
    inodes = {i for i in (_netns_inode(n) for n in nodes) if i}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            link = os.readlink(entry / "ns" / "net")
            if int(link.split("[")[1].rstrip("]")) in inodes and _start_time(int(entry.name)) is not None:
                found.append(int(entry.name))
    return found


def stop_pids(pids: list[int], timeout_s: float) -> list[int]:
    """SIGTERM, wait, then SIGKILL what is left; returns the PIDs that had to be killed."""
    starts = {p: _start_time(p) for p in pids}
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 3.0)):
        live = [p for p, s in starts.items() if s is not None and _start_time(p) == s]
        if not live:
            return [] if sig == signal.SIGTERM else live
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(_start_time(p) == starts[p] for p in live):
            time.sleep(0.05)
    return [p for p, s in starts.items() if s is not None]


def write_slurm_conf(d: Path, nodes: list[str], cpus_per_node: int) -> Path:
    """The local cluster's slurm.conf (see environment-notes: linuxproc, task/none, root, own munge socket)."""
    host = socket.gethostname().split(".")[0]
    lines = [
        "# Written by smml_lib.cluster.local_cluster: a 2-node Slurm cluster on one machine (network namespaces).",
        "ClusterName=smml",
        f"SlurmctldHost={host}({SUBNET}.1)",
        f"SlurmctldPort={CTLD_PORT}", f"SlurmdPort={SLURMD_PORT}",
        "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge",
        # cred_expire: how long a revoked job credential is remembered, and so how long a requeued job is
        # held before it may start again (BeginTime: cred_expire + 1 s); Slurm's default is 120 s, its minimum 5 s
        f"AuthInfo=socket={d / 'munge' / 'munge.socket'},cred_expire=5",
        "SchedulerParameters=sched_interval=2,bf_interval=2",  # a tiny queue: look for startable jobs often
        f"StateSaveLocation={d / 'state'}",
        f"SlurmdSpoolDir={d / 'spool' / '%n'}",
        f"SlurmctldPidFile={d / 'run' / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'run' / 'slurmd-%n.pid'}",
        f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={d / 'log' / 'slurmd-%n.log'}",
        # no cgroups inside a namespace host: track processes by parent PID, no CPU binding
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        # no slurmdbd: job states come from squeue/scontrol while known, then from this completion log
        "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/filetxt", f"JobCompLoc={d / 'log' / 'jobcomp.txt'}",
        "ReturnToService=2", "KillWait=10", "MinJobAge=3600", "SlurmdTimeout=60", "MessageTimeout=10",
        "InactiveLimit=0",
    ]
    for n in nodes:
        lines.append(f"NodeName={n} NodeAddr={node_addr(n)} NodeHostname={host} CPUs={cpus_per_node} State=UNKNOWN")
    lines.append(f"PartitionName=smml Nodes={','.join(nodes)} Default=YES MaxTime=INFINITE State=UP")
    path = d / "slurm.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def create_network(nodes: list[str]) -> None:
    run_cmd(["ip", "link", "add", BRIDGE, "type", "bridge"], what=f"creating bridge {BRIDGE}")
    run_cmd(["ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE])
    run_cmd(["ip", "link", "set", BRIDGE, "up"])
    for n in nodes:
        ns, veth = netns_name(n), host_veth(n)
        run_cmd(["ip", "netns", "add", ns], what=f"creating network namespace {ns}")
        run_cmd(["ip", "link", "add", veth, "type", "veth", "peer", "name", NODE_IFNAME, "netns", ns])
        run_cmd(["ip", "link", "set", veth, "master", BRIDGE, "up"])
        run_cmd(["ip", "-n", ns, "addr", "add", f"{node_addr(n)}/24", "dev", NODE_IFNAME])
        run_cmd(["ip", "-n", ns, "link", "set", NODE_IFNAME, "up"])
        run_cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
        # No default route on purpose: a DNS lookup from a node then fails at once instead of timing out
        # (torch resolves peer names), and nothing can leave the machine.


def link_names() -> set[str]:
    out = run_cmd(["ip", "-o", "link", "show"], check=False, timeout_s=5).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def netns_names() -> set[str]:
    out = run_cmd(["ip", "netns", "list"], check=False, timeout_s=5).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def remove_network(nodes: list[str]) -> list[str]:
    if which("ip") is None:
        return []
    removed = []
    links, spaces = link_names(), netns_names()
    for n in nodes:
        if host_veth(n) in links:  # deleting one end deletes the pair at once (netns deletion is lazy)
            run_cmd(["ip", "link", "del", host_veth(n)], check=False)
            removed.append(host_veth(n))
        if netns_name(n) in spaces:
            run_cmd(["ip", "netns", "del", netns_name(n)], check=False)
            removed.append(f"netns {netns_name(n)}")
    if BRIDGE in links:
        run_cmd(["ip", "link", "del", BRIDGE], check=False)
        removed.append(BRIDGE)
    return removed
