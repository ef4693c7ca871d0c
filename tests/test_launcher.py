"""The torchrun launcher: command lines, a crashing rank, a hung rank, and no process left behind.

Crash and hang drills use the collectives worker (it imports only torch, so it starts fastest).
"""

from __future__ import annotations

import sys
import time

import psutil
import pytest

from smml_lib.distributed import job, launcher, runtime


def _no_children_left() -> list:
    time.sleep(0.2)
    return [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]


def test_torchrun_command_single_and_multi_node(tmp_path):
    cmd = launcher.torchrun_command("train", ["--strategy", "fsdp"], nproc=4, log_dir=str(tmp_path))
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and cmd[cmd.index("--nproc-per-node") + 1] == "4"
    assert cmd[cmd.index("-m", 3) + 1] == "smml_lib.distributed.workers.train" and cmd[-2:] == ["--strategy", "fsdp"]
    assert cmd[cmd.index("--local-ranks-filter") + 1] == "0"
    multi = launcher.torchrun_command("collectives", nproc=4, nnodes=2, rdzv_endpoint="10.0.0.1:29500",
                                      rdzv_id="job42", torchrun="torchrun")
    assert multi[0] == "torchrun" and "--standalone" not in multi
    assert multi[multi.index("--rdzv-endpoint") + 1] == "10.0.0.1:29500"
    assert multi[multi.index("--rdzv-id") + 1] == "job42" and multi[multi.index("--nnodes") + 1] == "2"
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        launcher.torchrun_command("train", nnodes=2)
    assert launcher.worker_module("smml_lib.distributed.workers.tp") == "smml_lib.distributed.workers.tp"
    assert runtime.choose_backend(gpus_per_node=0, processes_per_node=2) == "gloo"  # CPU-only test machine
    assert runtime.choose_backend(gpus_per_node=4, processes_per_node=4) == "nccl"
    assert runtime.choose_backend(gpus_per_node=2, processes_per_node=4) == "gloo"  # NCCL needs a GPU per rank
    assert runtime.choose_backend("gloo", gpus_per_node=4, processes_per_node=4) == "gloo"


def test_crashed_rank_is_named_with_traceback(tmp_path):
    with pytest.raises(job.WorkerFailed) as info:
        launcher.launch("collectives", ["--inject-fault", "crash", "--fault-rank", "1"], nproc=2,
                        timeout_s=120, run_dir=tmp_path, echo=False)
    err = info.value
    assert err.rank == 1
    assert "rank 1" in str(err) and "injected crash on rank 1" in str(err)
    assert "Traceback" in str(err) and "maybe_inject_fault" in err.traceback
    assert _no_children_left() == []


def test_hung_rank_is_killed_at_timeout(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(job.LaunchTimeout, match="killed"):
        launcher.launch("collectives", ["--inject-fault", "hang", "--fault-rank", "0"], nproc=2,
                        timeout_s=6, run_dir=tmp_path, echo=False)  # killed whether it hangs or is still starting
    assert time.monotonic() - t0 < 6 + job.GRACE_S + 10
    assert _no_children_left() == []
    # nothing tagged with a launch id survives anywhere on the machine either
    leftovers = []
    for p in psutil.process_iter():
        try:
            if "SMML_LAUNCH_ID" in p.environ() and str(tmp_path) in p.environ().get("SMML_RUN_DIR", ""):
                leftovers.append(p)
        except psutil.Error:
            pass
    assert leftovers == []


def test_cli_prints_the_command(capsys):
    assert launcher.cli(["collectives", "--print-command", "--nproc", "4", "--", "--max-bytes", "1G"]) == 0
    out = capsys.readouterr().out.split()
    assert "--nproc-per-node" in out and out[out.index("--nproc-per-node") + 1] == "4"
    assert out[-3:] == ["smml_lib.distributed.workers.collectives", "--max-bytes", "1G"]
