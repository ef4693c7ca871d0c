"""The local two-node Slurm cluster, for real: ``pytest tests/test_cluster.py`` (as root, Slurm installed).

A session fixture starts the cluster once (network namespaces + munged + slurmctld + 2 slurmd) and stops it
at the end, checking that nothing is left behind. Jobs are real ``sbatch`` submissions of the script from
``smml_lib.cluster.sbatch.render_sbatch`` running ``torchrun`` across the two namespace hosts over gloo. Without
root or the Slurm packages these tests are skipped with the reason (``scripts/course.sh setup`` installs
the packages as root).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from smml_lib.cluster import host, jobs, local_cluster, sbatch

PROBLEMS = host.preflight()
needs_cluster = pytest.mark.skipif(bool(PROBLEMS), reason="; ".join(PROBLEMS) or "ok")
pytestmark = [pytest.mark.cluster]  # conftest: under pytest-xdist, all cluster tests run on one worker


@pytest.fixture(scope="session")
def running_cluster():
    if PROBLEMS:
        pytest.skip("; ".join(PROBLEMS))
    c = local_cluster.up()
    yield c
    report = local_cluster.down()
    assert report.clean, report.leftovers


def _ours_left() -> list[str]:
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10).stdout
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [w for w in ("smml-br0", "smml-h1", "smml-h2", "smml-node1", "smml-node2") if w in links + spaces]


def test_preflight_explains_missing_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    problems = host.preflight()
    assert any("needs root" in p and "sudo smml cluster up" in p for p in problems)
    c = local_cluster.ensure("local")
    assert not c.available and "root" in c.reason


@needs_cluster
def test_nodes_are_idle_namespace_hosts_with_their_own_addresses(running_cluster):
    nodes = jobs.nodes_frame(running_cluster)
    assert list(nodes["node"]) == ["node1", "node2"]
    assert list(nodes["address"]) == ["10.213.0.11", "10.213.0.12"]
    assert set(nodes["state"]) <= {"IDLE", "MIXED", "ALLOCATED"}
    status = local_cluster.status()
    assert status["up"] and all(d["alive"] for d in status["daemons"]) and len(status["daemons"]) == 4
    again = local_cluster.up()  # a second up reuses the running cluster
    assert not again.started_here and again.conf == running_cluster.conf


@needs_cluster
def test_failed_job_reports_rank_node_and_traceback(running_cluster):
    job = sbatch.TorchrunJob("hello", ["--steps", "4", "--inject-fault", "crash", "--fault-rank", "1",
                                             "--fault-step", "2"], nodes=2, name="crash")
    with pytest.raises(jobs.JobFailed) as err:
        jobs.submit_and_follow(job, running_cluster, timeout_s=240, echo=False)
    text = str(err.value)
    assert "FAILED" in text and "exit code" in text and "node[1-2]" in text
    assert "rank 1 on node2" in text and "injected crash" in text
    assert err.value.run.state == "FAILED"


@needs_cluster
def test_two_node_job_runs_and_a_preempted_one_saves_requeues_and_resumes(running_cluster):
    """One 2-node torchrun job (each job costs ~10 s of start-up here): it runs on both nodes, is preempted
    after step 3, requeued, and its second run resumes from the checkpoint and completes."""
    job = sbatch.TorchrunJob("hello", ["--steps", "8", "--step-s", "0.5", "--resume"], nodes=2, nproc_per_node=1,
                             name="preempt")
    run = jobs.submit_and_follow(job, running_cluster, timeout_s=300, echo=False, preempt_when=jobs.after_step(3))
    assert run.ok and run.exit_code == "0:0" and run.nodes == "node[1-2]"
    assert [r["state"] for r in run.timeline][-1] == "COMPLETED" and "RUNNING" in run.frame()["state"].tolist()
    df = run.results().sort_values("rank")
    assert list(df["node"]) == ["node1", "node2"] and list(df["node_ip"]) == ["10.213.0.11", "10.213.0.12"]
    assert (df["ifname"] == "smml0").all() and (df["allreduce_sum"] == 1).all()
    port = 20000 + (int(run.job_id) % 3000) * 4  # a port per job id and restart: +0 first, +1 after the requeue
    assert f"rendezvous 10.213.0.11:{port}," in run.log() and f"rendezvous 10.213.0.11:{port + 1}," in run.log()
    assert run.job_id not in set(jobs.queue_frame(running_cluster)["job_id"])  # finished jobs leave the queue
    # the preemption: SIGUSR1, a checkpoint, the requeue, and a second run that resumes after step 3
    assert run.restarts == 1 and "SIGUSR1" in run.log() and "requeueing job" in run.log()
    assert (df["restart"] == 1).all() and (df["first_step"] >= 4).all() and (df["last_step"] == 8).all()


@needs_cluster
def test_link_limit_is_applied_and_removed(running_cluster):
    with local_cluster.link_limit(100) as cmds:
        assert len(cmds) == 2 and all("tbf rate 100" in c for c in cmds)
        links = local_cluster.status()["links"]
        assert all("tbf" in q and "100Mbit" in q for q in links.values()), links
    assert not any("tbf" in q for q in local_cluster.status()["links"].values())


@needs_cluster
def test_down_leaves_nothing_then_up_again(running_cluster):
    report = local_cluster.down()
    assert report.clean and not _ours_left()
    assert not local_cluster.status()["up"]
    assert not any(d["alive"] for d in local_cluster.status()["daemons"])  # state.json is gone too
    c = local_cluster.up()  # the session fixture tears it down at the end
    assert c.started_here and local_cluster.status()["up"]


@needs_cluster
def test_a_process_that_started_the_cluster_stops_it_when_it_exits(running_cluster):
    local_cluster.down()
    code = ("from smml_lib.cluster import local_cluster; "
            "a = local_cluster.ensure('local'); b = local_cluster.ensure('local'); "
            "assert a.started_here and b.started_here, 'a re-run cell keeps ownership'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    deadline = time.monotonic() + 30  # the exit handler stops it from a detached process
    while time.monotonic() < deadline and (_ours_left() or local_cluster.status()["daemons"]):
        time.sleep(0.3)
    assert not _ours_left() and not local_cluster.status()["daemons"]
    local_cluster.up()


@needs_cluster
def test_cli_status_and_limit(running_cluster, capsys):
    assert local_cluster.cli(["status"]) == 0
    assert '"up": true' in capsys.readouterr().out
    assert local_cluster.cli(["limit", "50"]) == 0 and local_cluster.cli(["limit", "off"]) == 0


def test_a_daemon_still_writing_its_pid_file_is_waited_for(tmp_path):
    """slurmctld creates its pid file before writing the number: an empty file means 'not yet', not a crash."""
    import threading

    from smml_lib.cluster.host import record_daemon

    pid_file = tmp_path / "d.pid"
    pid_file.write_text("")
    threading.Timer(0.3, lambda: pid_file.write_text(f"{os.getpid()}\n")).start()
    rec = record_daemon("d", pid_file, timeout_s=5)
    assert rec["pid"] == os.getpid() and rec["start"]


def test_down_finds_a_daemon_whose_start_was_not_recorded(tmp_path):
    """A start that failed half-way leaves a running daemon known only by its pid file: down must stop it."""
    import shutil as sh

    from smml_lib.cluster.host import daemons_from_pid_files

    fake = tmp_path / "slurmctld"  # a process whose name is "slurmctld"
    sh.copy(sh.which("sleep"), fake)
    proc = subprocess.Popen([str(fake), "30"])
    try:
        deadline = time.monotonic() + 5
        while open(f"/proc/{proc.pid}/comm").read().strip() != "slurmctld" and time.monotonic() < deadline:
            time.sleep(0.01)  # the child may still be finishing its exec
        (tmp_path / "slurmctld.pid").write_text(f"{proc.pid}\n")
        (tmp_path / "other.pid").write_text(f"{os.getpid()}\n")  # not a Slurm daemon: ignored
        found = daemons_from_pid_files(tmp_path, known=[])
        assert [(d["name"], d["pid"]) for d in found] == [("slurmctld", proc.pid)]
        assert daemons_from_pid_files(tmp_path, known=found) == []
    finally:
        proc.kill()
        proc.wait()
