"""Distributed training on 2 gloo ranks: DDP and FSDP2 match the single-process run, and resume is exact.

Tolerance (fp32): losses within 1e-5 relative of the single-process run after 4 AdamW steps; the only
difference is the order in which gradients are summed (the distributed runs also accumulate gradients over
two micro-batches per rank, which must not change the result). Parameters: mean absolute difference under
1e-7 and at least 99.999 % of elements within 2e-5. Adam divides each gradient by its own running RMS, so
where a gradient is at rounding level the summation order can move that element by up to one step of size
lr; a handful of such elements (1 of 3.4 M measured, 3.8e-5 off) may differ up to lr x steps. A real bug
(a missing average, a skipped micro-batch) moves most elements by far more. A run resumed
from a checkpoint must give the *same* losses and bitwise-equal final parameters as the uninterrupted run.

Launches are batched (both strategies in one torchrun) because each start costs several seconds here.
"""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from smml_lib.checkpoint import sharded as ckpt
from smml_lib.checkpoint.stop import EXIT_STOPPED
from smml_lib.distributed.launcher import launch, start
from smml_lib.distributed.workers import train

LR = 1e-3
COMMON = ["--max-steps", "4", "--lr", str(LR), "--global-batch", "4", "--seq-len", "32", "--warmup-steps", "0",
          "--dump-params"]


def _params(run_dir, strategy):
    return torch.load(run_dir / f"params-{strategy}.pt")


def _rank0(df, strategy):
    return df[(df["strategy"] == strategy) & (df["rank"] == 0)].iloc[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Single process in-process; DDP + FSDP in one 2-rank launch with a checkpoint after step 2."""
    root = tmp_path_factory.mktemp("train")
    single_dir = root / "single"
    assert train.main(COMMON + ["--strategy", "single", "--run-dir", str(single_dir)]) == 0
    single = json.loads((single_dir / "results" / "rank0000-train-single.json").read_text())[0]
    dist_dir = root / "dist"
    # micro-batch 1: each rank accumulates gradients over its 2 sequences (the single run does all 4 at once)
    df = launch("train", COMMON + ["--strategy", "ddp,fsdp", "--micro-batch", "1", "--checkpoint-dir",
                                          str(root / "ckpt"), "--checkpoint-every", "2"], nproc=2, timeout_s=300,
                run_dir=dist_dir, echo=False)
    return {"root": root, "single": single, "single_params": _params(single_dir, "single"), "df": df,
            "dist_dir": dist_dir}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_matches_single_process(reference, strategy):
    row = _rank0(reference["df"], strategy)
    assert row["world_size"] == 2 and row["steps_run"] == 4 and row["grad_accum"] == 2
    assert row["losses"] == pytest.approx(reference["single"]["losses"], rel=1e-5)
    got, want = _params(reference["dist_dir"], strategy), reference["single_params"]
    assert got.keys() == want.keys()
    diff = torch.cat([(got[name] - want[name]).abs().flatten() for name in want])
    assert diff.mean().item() < 1e-7, f"mean |diff| {diff.mean().item():.3g}"
    assert (diff > 2e-5).float().mean().item() <= 1e-5, f"{int((diff > 2e-5).sum())} of {diff.numel()} elements off"
    assert diff.max().item() <= LR * 4, f"max |diff| {diff.max().item():.3g} is more than 4 Adam steps"
    assert row["memory_method"] == "cpu_tensor_bytes" and row["peak_memory_bytes"] > 0
    assert row["tokens_per_s"] > 0 and row["checkpoint_bytes"] > 0


def test_resume_is_exact(reference):
    root = reference["root"]
    for s in ("ddp", "fsdp"):  # start from the step-2 checkpoints of the reference run
        shutil.copytree(root / "ckpt" / s / "step_00000002", root / "resume" / s / "step_00000002")
    out = root / "resumed"
    df = launch("train", COMMON + ["--strategy", "ddp,fsdp", "--micro-batch", "1", "--checkpoint-dir",
                                          str(root / "resume"), "--resume"], nproc=2, timeout_s=300, run_dir=out,
                echo=False)
    for s in ("ddp", "fsdp"):
        ref, row = _rank0(reference["df"], s), _rank0(df, s)
        assert row["resumed_from_step"] == 2 and row["first_step"] == 3
        assert row["losses"] == ref["losses"][2:]  # exactly the same numbers
        a, b = _params(reference["dist_dir"], s), _params(out, s)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{s}: resumed parameters differ"


class _Notice(BaseHTTPRequestHandler):
    """An instance-metadata-style endpoint on 127.0.0.1: 404 (no notice) until armed, then 200 + JSON."""

    armed = False

    def do_GET(self):
        if not type(self).armed:
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps({"action": "terminate", "time": "2030-01-01T00:00:00Z"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_sigterm_stops_with_checkpoint_then_resume_is_exact(reference, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Notice)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/latest/meta-data/spot/instance-action"
    args = COMMON + ["--strategy", "ddp", "--micro-batch", "1", "--checkpoint-dir", str(tmp_path / "ck"),
                     "--notice-url", url, "--notice-poll-s", "0.2"]
    job = start("train", args, nproc=2, timeout_s=300, run_dir=tmp_path / "stopped", echo=False)
    while job.proc.poll() is None and not any("step    1/4" in line for line in job.tail):
        job._pump(0.1)
    job.stop()  # SIGTERM to torchrun, which forwards it to both ranks
    df = job.wait()
    assert df.attrs["stopped_early"] and df["stopped_early"].all() and (df["exit_code"] == EXIT_STOPPED).all()
    last = int(df["last_step"].iloc[0])
    assert (df["last_step"] == last).all() and (df["steps_since_checkpoint"] == 0).all()
    assert "SIGTERM" in " ".join(df["stop_reason"])
    assert ckpt.latest_checkpoint(tmp_path / "ck").name == f"step_{last:08d}"
    # resume while the notice endpoint answers 404: the poller runs, nothing stops the job
    resumed = launch("train", args + ["--resume"], nproc=2, timeout_s=300, run_dir=tmp_path / "resumed",
                     echo=False)
    row, ref = _rank0(resumed, "ddp"), _rank0(reference["df"], "ddp")
    assert row["resumed_from_step"] == last and not row["stopped_early"]
    assert row["losses"] == ref["losses"][last:]
    a, b = _params(reference["dist_dir"], "ddp"), _params(tmp_path / "resumed", "ddp")
    assert all(torch.equal(a[k], b[k]) for k in a)
    server.shutdown()
    server.server_close()
