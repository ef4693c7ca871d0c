"""Module 03's lab helpers (``smml_lib.cluster.multinode``) on hand-made job folders: fast, no cluster, no torch run."""

from __future__ import annotations

import json

import pytest

from smml_lib.cluster import jobs, multinode
from smml_lib.course.lab import Lab
from smml_lib.distributed.train_config import TrainConfig
from smml_lib.models import anatomy


class _Lab(Lab):
    def __init__(self, mode: str):
        import torch

        super().__init__("test", mode, torch.device("cpu"))


def _write_rows(folder, rows, tag="train-ddp"):
    (folder / "results").mkdir(parents=True, exist_ok=True)
    for r in rows:
        (folder / "results" / f"rank{r['rank']:04d}-{tag}.json").write_text(json.dumps([r]))


def _train_row(rank, first, losses, **extra):
    return {"rank": rank, "num_nodes": 2, "world_size": 2, "backend": "gloo", "params": 1000, "step_time_s": 0.5,
            "tokens_per_s": 100.0, "losses": losses, "first_step": first, "last_step": first + len(losses) - 1,
            "resumed_from_step": first - 1 if first > 1 else None, "checkpoint_bytes": 12000, "save_s": 0.1,
            "load_s": 0.2 if first > 1 else None, **extra}


def test_traffic_and_checkpoint_models():
    p = 1_000_000
    assert multinode.comm_bytes_per_step("ddp", p, 2) == pytest.approx(4e6)  # 2(n-1)/n x 4P
    assert multinode.comm_bytes_per_step("ddp", p, 8) == pytest.approx(2 * 7 / 8 * 4e6)
    assert multinode.comm_bytes_per_step("fsdp", p, 8) == pytest.approx(7 / 8 * 8e6)
    assert multinode.comm_bytes_per_step("ddp", p, 1) == 0
    assert multinode.checkpoint_bytes_predicted(p) == 12e6
    # a tied embedding is saved under both names: the rehearsal measured 4,932,768,988 B for a 1-layer 1B
    tied = anatomy.ModelDims.of(anatomy.preset_config("Llama-3.2-1B")).tied_params
    assert tied == 128_256 * 2048
    assert multinode.checkpoint_bytes_predicted(323_491_840, tied) == pytest.approx(4_932_768_988, rel=1e-4)
    with pytest.raises(ValueError):
        multinode.comm_bytes_per_step("tp", p, 2)


def test_jobs_follow_the_mode_and_carry_the_run():
    smoke, real = _Lab("smoke"), _Lab("real")
    assert multinode.resources(smoke, gpus_per_node=4) == multinode.Resources(2, 1, 0, False)
    # real mode on this CPU machine (a rehearsal): 4 processes per node, but no GPUs asked of Slurm
    assert multinode.resources(real, gpus_per_node=4) == multinode.Resources(2, 4, 0, False)
    res = multinode.Resources(2, 4, 4, True)  # what real mode asks for on GPU nodes
    assert res.world_size == 8
    run = TrainConfig(model="preset:Llama-3.2-1B", strategy="fsdp", precision="bf16", max_steps=5,
                      checkpoint_dir=multinode.JOB_CHECKPOINTS, resume=True)
    job = multinode.train_job(run, "t", res)
    assert job.gpus_per_node == 4 and job.exclusive and job.args == run.argv()
    assert "--resume" in job.args and "fsdp" in job.args and "bf16" in job.args
    assert "$SMML_RUN_DIR/ckpt" in job.args  # expanded by the job script's shell on the node
    coll = multinode.collectives_job("c", multinode.Resources(1, 2, 0, False), max_bytes="4M", iters=4, warmup=1)
    assert coll.worker == "collectives" and coll.gpus_per_node == 0 and coll.world_size == 2
    assert coll.args[coll.args.index("--max-bytes") + 1] == "4M"


def test_summaries_join_the_attempts_of_a_requeued_job(tmp_path):
    straight = jobs.JobRun("1", tmp_path / "a", tmp_path / "a" / "job.sbatch")
    _write_rows(straight.run_dir, [_train_row(0, 1, [4.0, 3.0, 2.0, 1.0]), _train_row(1, 1, [4.0, 3.0, 2.0, 1.0])])
    resumed = jobs.JobRun("2", tmp_path / "b", tmp_path / "b" / "job.sbatch", restarts=1)
    _write_rows(resumed.run_dir / "attempt0", [_train_row(0, 1, [4.0, 3.0], stopped_early=True)])
    _write_rows(resumed.run_dir, [_train_row(0, 3, [2.0, 1.0])])
    losses = multinode.losses_frame({"straight": straight, "resumed": resumed})
    r = losses[losses["run"] == "resumed"]
    assert list(r["step"]) == [1, 2, 3, 4] and list(r["attempt"]) == [0, 0, 1, 1]
    summary = multinode.training_summary({"straight": straight, "resumed": resumed})
    assert list(summary["restarts"]) == [0, 1] and summary["resumed_from_step"].iloc[1] == 2
    assert summary["final_loss"].tolist() == [1.0, 1.0]
    multinode.plot_losses({"straight": straight, "resumed": resumed}, "test_m03_losses")


def test_timeline_accounting_and_plot(tmp_path):
    run = jobs.JobRun("3", tmp_path, tmp_path / "job.sbatch", timeline=[
        {"t_s": 0.0, "state": "PENDING"}, {"t_s": 1.5, "state": "RUNNING"}, {"t_s": 9.0, "state": "PENDING"},
        {"t_s": 10.0, "state": "RUNNING"}, {"t_s": 20.0, "state": "COMPLETED"}])
    assert run.seconds_in("PENDING") == pytest.approx(2.5) and run.elapsed_s == 20.0
    multinode.plot_timeline({"x": run}, "test_m03_timeline")


def test_fresh_folders_are_new_every_time():
    a, b = multinode.fresh_folder("restore-test"), multinode.fresh_folder("restore-test")
    assert a != b and a.is_dir() and not any(a.iterdir())
