"""The sbatch script and the Slurm helpers, without a cluster: ``pytest tests/test_slurm.py``.

The generated script is checked by bash and then really executed with stand-ins for ``scontrol`` and
``srun`` (a one-node "allocation" on 127.0.0.1), so its rendezvous / interface logic runs a real torchrun
job even where there is no root and no Slurm. The real two-node runs are in ``test_cluster.py``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smml_lib.cluster import jobs, sbatch
from smml_lib.cluster.local_cluster import Cluster


def test_script_has_multinode_torchrun_essentials(tmp_path):
    job = sbatch.TorchrunJob("train", ["--strategy", "fsdp"], nodes=2, nproc_per_node=4, gpus_per_node=4,
                            partition="gpu", exclusive=True, time_limit="01:00:00", signal_lead_s=120)
    text = sbatch.render_sbatch(job, tmp_path)
    for needle in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=1",
                   "#SBATCH --partition=gpu", "#SBATCH --exclusive", "#SBATCH --requeue",
                   "#SBATCH --signal=B:USR1@120", f"#SBATCH --output={tmp_path}/slurm-%j.out",
                   "SMML_BACKEND=nccl", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "FI_PROVIDER=efa",
                   "--rdzv-backend c10d", '"$HEAD_ADDR:$RDZV_PORT"', "is_host=$IS_HOST", "--nproc-per-node 4",
                   "-m smml_lib.distributed.workers.train --strategy fsdp", "scontrol requeue",
                   "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=105",
                   '--cpus-per-task="${SLURM_CPUS_ON_NODE:-1}"'):
        assert needle in text, needle
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)  # valid bash
    cpu = sbatch.render_sbatch(sbatch.TorchrunJob("hello", requeue=False, socket_ifname="eth1"), tmp_path)
    assert "--gpus-per-node" not in cpu and "SMML_BACKEND=gloo" in cpu and "--requeue" not in cpu
    assert 'SMML_IFNAME="eth1"' in cpu


def test_parse_scontrol_line():
    line = ("JobId=7 JobName=hello UserId=root(0) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) "
            "Requeue=1 Restarts=0 BatchFlag=1 ExitCode=1:0 NodeList=node[1-2] BatchHost=node1")
    f = jobs.parse_scontrol(line)
    assert f["JobState"] == "FAILED" and f["ExitCode"] == "1:0" and f["NodeList"] == "node[1-2]"
    assert f["Reason"] == "NonZeroExitCode" and f["BatchHost"] == "node1"


def _fake_slurm(bin_dir: Path) -> None:
    """scontrol / srun / scancel stand-ins: a one-node allocation 'n1' at 127.0.0.1."""
    scripts = {
        "scontrol": '#!/bin/bash\ncase "$1 $2" in\n  "show hostnames") echo n1 ;;\n'
                    '  "show node") echo "NodeName=n1 Arch=x86_64 NodeAddr=127.0.0.1 NodeHostName=n1 State=ALLOC" ;;\n'
                    '  *) echo "fake scontrol $*" ;;\nesac\n',
        "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                'SLURM_NODEID=0 SLURMD_NODENAME=n1 exec "$@"\n',
        "scancel": "#!/bin/bash\necho fake scancel \"$@\"\n",
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.slow
def test_generated_script_runs_a_real_torchrun_job(tmp_path):
    if shutil.which("ip") is None:
        pytest.skip("needs `ip` (iproute2) for the interface detection in the script")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_slurm(bin_dir)
    job = sbatch.TorchrunJob("hello", nodes=1, nproc_per_node=2, rdzv_port=29517)
    script = sbatch.write_script(job, tmp_path / "run")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "n1", "SLURM_NNODES": "1"}
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "address 127.0.0.1, interface lo" in out.stdout  # the interface that carries the node's address
    run = jobs.JobRun("42", script.parent, script)
    df = run.results()
    assert sorted(df["rank"]) == [0, 1] and (df["allreduce_sum"] == 1).all() and (df["ifname"] == "lo").all()


def test_unreachable_slurm_fails_fast_with_hint(tmp_path):
    if shutil.which("sbatch") is None:
        pytest.skip("no Slurm client installed")
    conf = tmp_path / "jobs.conf"
    conf.write_text(f"ClusterName=x\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=9\nAuthType=auth/munge\n"
                    f"AuthInfo=socket={tmp_path}/no.socket\nNodeName=n1 CPUs=1\nPartitionName=p Nodes=n1 Default=YES\n")
    dead = Cluster("local", conf=conf, nodes=["n1"])
    t0 = time.monotonic()
    with pytest.raises(jobs.SlurmError) as err:
        jobs.submit(sbatch.TorchrunJob("hello"), dead, run_dir=tmp_path / "run")
    assert time.monotonic() - t0 < 15
    assert "Is Slurm up" in str(err.value)


def test_missing_slurm_client_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    with pytest.raises(jobs.SlurmError, match="no Slurm client"):
        jobs.slurm_cmd(["sbatch", "--version"])


@pytest.mark.slow
def test_without_slurm_the_same_job_runs_locally_and_survives_a_preemption(tmp_path):
    """No cluster: the worker runs on this machine; the drill stops it after step 2 and it resumes."""
    nocluster = Cluster("none", "test: no Slurm here")
    job = sbatch.TorchrunJob("hello", ["--steps", "8", "--step-s", "0.4", "--resume"], nodes=2,
                            nproc_per_node=1, name="local")
    run = jobs.submit_and_follow(job, nocluster, run_dir=tmp_path / "run", preempt_when=jobs.after_step(2),
                                  timeout_s=180, echo=False)
    assert run.where == "local" and run.ok and run.restarts == 1
    df = run.results()
    assert len(df) == 2 and (df["last_step"] == 8).all() and (df["first_step"] > 1).all()
    assert (tmp_path / "run" / "job.sbatch").exists()  # the script a cluster would run is still written
    assert "step    8/8" in run.log()


def test_python_and_module_paths_are_absolute_in_script(tmp_path):
    text = sbatch.render_sbatch(sbatch.TorchrunJob("collectives"), tmp_path)
    assert f"{sys.executable} -m torch.distributed.run" in text
    assert "-m smml_lib.distributed.workers.collectives" in text
