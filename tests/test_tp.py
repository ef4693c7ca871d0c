"""Tensor parallelism over 2 gloo ranks computes the same logits as the unsharded model."""

from __future__ import annotations

from smml_lib.distributed.launcher import launch


def test_tensor_parallel_forward_matches_unsharded(tmp_path):
    df = launch("tp", ["--batch", "2", "--seq-len", "16", "--iters", "1"], nproc=2, timeout_s=180,
                run_dir=tmp_path, echo=False)
    assert len(df) == 2
    for _, row in df.iterrows():
        assert row["max_abs_diff"] < 1e-4 * max(1.0, row["ref_max_abs"])  # fp32: only the summation order differs
        assert row["heads_this_rank"] == 4  # 8 query heads split over 2 ranks
        assert row["params_this_rank"] < row["params_full"]
