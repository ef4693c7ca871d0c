"""The sbatch script of a multi-node ``torchrun`` job: what it asks Slurm for and how the nodes meet.

``render_sbatch`` writes a script that runs one ``torchrun`` per node (``srun --ntasks-per-node=1``); torchrun
starts one process per GPU. How the pieces find each other:

- *rendezvous*: the first node of the allocation hosts torchrun's c10d store. Its address comes from
  Slurm (``scontrol show node`` -> ``NodeAddr``), and that node is told it is the host
  (``--rdzv-conf is_host=1``): torchrun's own guess compares host names and misses secondary interfaces;
- *network interface*: each node uses the interface that carries its Slurm address, exported as
  ``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME``. Without it gloo binds to whatever the host name resolves
  to (often 127.0.0.1) and the other nodes cannot connect. ``TorchrunJob.socket_ifname`` overrides it;
- *EFA*: where an EFA device exists (``fi_info -p efa`` or an ``efa`` driver under ``/sys/class/infiniband``)
  the node exports ``FI_PROVIDER=efa`` and ``FI_EFA_FORK_SAFE=1`` so NCCL's aws-ofi-nccl plugin uses it;
- *preemption*: ``--requeue`` plus ``--signal=B:USR1@<lead>``: before the time limit (or when
  ``preempt()`` simulates it) the script receives SIGUSR1 and sends SIGTERM to the job steps; torchrun
  forwards it to the workers, which finish the step, save a checkpoint and exit (``smml_lib.checkpoint.stop``);
  then the script requeues the job, which starts again and resumes (``--resume``).

The same script runs unchanged on the course cluster and on the local one (``smml_lib.cluster.local_cluster``); only the
request lines (GPUs, partition, time) differ.
"""

from __future__ import annotations

import datetime as _dt
import shlex
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from smml_lib.common.paths import output_dir
from smml_lib.distributed.launcher import torchrun_command
from smml_lib.distributed.runtime import choose_backend

_ADDR_OF = "sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p'"


@dataclass
class TorchrunJob:
    """What to run on how many nodes; ``render_sbatch`` turns it into a script."""

    worker: str  # "hello", "train", "collectives" or a module name
    args: list[str] = field(default_factory=list)
    nodes: int = 2
    nproc_per_node: int = 1  # processes per node (= GPUs per node on a GPU cluster)
    gpus_per_node: int = 0  # adds --gpus-per-node (0 on CPU clusters)
    name: str = "smml"
    partition: str | None = None
    time_limit: str = "00:30:00"
    cpus_per_task: int | None = None
    exclusive: bool = False  # whole nodes (real clusters: nobody else's job shares your GPUs' PCIe/NIC)
    requeue: bool = True
    signal_lead_s: int = 90  # SIGUSR1 this long before the time limit: finish a step and save in time
    rdzv_port: int | None = None  # None: 20000 + a number from the job id and restart (see render_sbatch)
    socket_ifname: str | None = None  # None: each node uses the interface carrying its Slurm address
    backend: str = "auto"  # SMML_BACKEND: auto = nccl when each process has a GPU (runtime.choose_backend)
    env: dict[str, str] = field(default_factory=dict)
    python: str = field(default_factory=lambda: sys.executable)  # same path on every node (shared install)

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node


def new_run_dir(job: TorchrunJob) -> Path:
    """A fresh folder for one job under ``<outputs>/slurm`` (must be on a file system all nodes share)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return output_dir("slurm", f"{stamp}-{job.name}-{uuid.uuid4().hex[:6]}")


def _shell_word(token: str) -> str:
    """Quote for bash; tokens holding ``$VARS`` are double-quoted so they expand on the node."""
    return f'"{token}"' if "$" in token and '"' not in token else shlex.quote(token)


def torchrun_line(job: TorchrunJob) -> str:
    """The per-node torchrun command (shell text, expanded on each node), built by ``launcher.torchrun_command``."""
    argv = torchrun_command(job.worker, job.args, nproc=job.nproc_per_node, nnodes=job.nodes,
                            rdzv_endpoint="$HEAD_ADDR:$RDZV_PORT", rdzv_id="$SLURM_JOB_ID-$RESTART",
                            python=job.python, log_dir="$SMML_RUN_DIR/logs/$SLURMD_NODENAME-$RESTART")
    at = argv.index("-m", 3)  # torchrun's own options end where the worker module starts
    argv[at:at] = ["--rdzv-conf", "is_host=$IS_HOST", "--local-addr", "$NODE_IP"]
    return " ".join(_shell_word(a) for a in argv)


def render_sbatch(job: TorchrunJob, run_dir: str | Path) -> str:
    """The sbatch script for ``job`` with logs, results and checkpoints in ``run_dir`` (a shared folder)."""
    run_dir = Path(run_dir)
    backend = choose_backend(job.backend, gpus_per_node=job.gpus_per_node, processes_per_node=job.nproc_per_node)
    directives = [f"--job-name={job.name}", f"--nodes={job.nodes}",
                  "--ntasks-per-node=1              # one torchrun per node; it starts the per-GPU processes"]
    if job.gpus_per_node:
        directives.append(f"--gpus-per-node={job.gpus_per_node}")
    if job.cpus_per_task:
        directives.append(f"--cpus-per-task={job.cpus_per_task}")
    if job.exclusive:
        directives.append("--exclusive")
    if job.partition:
        directives.append(f"--partition={job.partition}")
    directives += [f"--time={job.time_limit}",
                   f"--output={run_dir}/slurm-%j.out   # all nodes, one file; %j = job id",
                   "--open-mode=append              # a requeued job appends to the same log",
                   f"--chdir={run_dir}"]
    if job.requeue:
        directives += ["--requeue                       # may go back to the queue (preemption, node failure)",
                       f"--signal=B:USR1@{job.signal_lead_s}          # warn this script {job.signal_lead_s} s "
                       "before the time limit"]
    env_lines = [f"export {k}={_shell_word(str(v))}" for k, v in job.env.items()]
    cpus = job.cpus_per_task or '"${SLURM_CPUS_ON_NODE:-1}"'  # all CPUs the job holds on the node
    port = job.rdzv_port or "$(( 20000 + (SLURM_JOB_ID % 3000) * 4 + RESTART % 4 ))"
    ifname = f'"{job.socket_ifname}"' if job.socket_ifname else \
        """$(ip -o -4 addr show | awk -v ip="$NODE_IP" '{split($4, a, "/"); if (a[1] == ip) {print $2; exit}}')"""
    return f"""#!/bin/bash
# {job.nodes}-node torchrun job: {job.worker} {' '.join(job.args)}
# Written by smml_lib.cluster.sbatch.render_sbatch. Submit with: sbatch {run_dir}/job.sbatch
{chr(10).join('#SBATCH ' + d for d in directives)}
set -uo pipefail

export SMML_RUN_DIR={_shell_word(str(run_dir))}   # results, per-rank logs, checkpoints: a shared folder
export SMML_BACKEND={backend} PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT={max(10, job.signal_lead_s - 15)}   # SIGTERM -> SIGKILL grace for workers
# CPU threads per process: the node's cores shared by its processes, at least one
per_process=$(( $(nproc) / {job.nproc_per_node} ))
export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-$(( per_process > 0 ? per_process : 1 ))}}
{chr(10).join(env_lines)}
export RESTART=${{SLURM_RESTART_COUNT:-0}}
if [ "$RESTART" -gt 0 ] && [ -d "$SMML_RUN_DIR/results" ]; then   # keep what the interrupted attempt reported
  previous="$SMML_RUN_DIR/attempt$((RESTART - 1))"
  mkdir -p "$previous" && mv "$SMML_RUN_DIR/results" "$previous/"
fi

# 1. Rendezvous: the first node of the allocation hosts torchrun's c10d store, at its Slurm address.
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export HEAD_ADDR=$(scontrol show node "$HEAD_NODE" | {_ADDR_OF})
# a port per job and restart: the previous job's (or attempt's) store port may still be held on this node
export RDZV_PORT={port}
echo "[smml] job $SLURM_JOB_ID (restart $RESTART) on $SLURM_JOB_NODELIST: rendezvous $HEAD_ADDR:$RDZV_PORT, $(date +%T)"

# 2. On every node: this node's address and interface, EFA if present, then torchrun.
smml_node() {{
  NODE_ADDR=$(scontrol show node "$SLURMD_NODENAME" | {_ADDR_OF})
  export NODE_IP=$(getent ahostsv4 "$NODE_ADDR" | awk 'NR == 1 {{print $1}}')
  export SMML_IFNAME={ifname}
  export GLOO_SOCKET_IFNAME=$SMML_IFNAME NCCL_SOCKET_IFNAME=$SMML_IFNAME
  EFA=no
  if {{ command -v fi_info >/dev/null && fi_info -p efa -t FI_EP_RDM >/dev/null 2>&1; }} ||
     ls -l /sys/class/infiniband/*/device/driver 2>/dev/null | grep -q '/efa$'; then
    EFA=yes
    export FI_PROVIDER=efa FI_EFA_FORK_SAFE=1   # NCCL's aws-ofi-nccl plugin then uses EFA, not TCP sockets
  fi
  IS_HOST=0; [ "$SLURM_NODEID" = 0 ] && IS_HOST=1
  echo "[smml] node $SLURMD_NODENAME (node id $SLURM_NODEID): address $NODE_IP, interface $SMML_IFNAME, EFA $EFA"
  exec {torchrun_line(job)}
}}
export -f smml_node

# 3. Preemption: SIGUSR1 (time limit near, or `scancel --signal=USR1 --batch`) -> SIGTERM to the job
#    steps; torchrun forwards it to the workers, which save a checkpoint and exit; then requeue.
PREEMPTED=0
on_usr1() {{
  echo "[smml] $(date +%T) SIGUSR1: stopping the workers (SIGTERM) so they save a checkpoint"
  PREEMPTED=1
  scancel --signal=TERM "$SLURM_JOB_ID"
}}
trap on_usr1 USR1
trap 'echo "[smml] $(date +%T) SIGTERM: the job is being cancelled or preempted"' TERM

# srun does not inherit --cpus-per-task from sbatch (Slurm >= 22.05): give torchrun the node's CPUs explicitly
srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpus-per-task={cpus} bash -c smml_node &
SRUN_PID=$!
while true; do wait "$SRUN_PID"; RC=$?; kill -0 "$SRUN_PID" 2>/dev/null || break; done
if [ "$PREEMPTED" = 1 ] && [ "{int(job.requeue)}" = 1 ]; then
  echo "[smml] $(date +%T) workers stopped (exit $RC): requeueing job $SLURM_JOB_ID; it resumes from its checkpoint"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
echo "[smml] $(date +%T) torchrun finished with exit code $RC"
exit $RC
"""


def write_script(job: TorchrunJob, run_dir: Path | None = None) -> Path:
    """Create the run folder and write ``job.sbatch`` into it; returns the script's path."""
    run_dir = Path(run_dir) if run_dir else new_run_dir(job)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "job.sbatch"
    path.write_text(render_sbatch(job, run_dir))
    return path
