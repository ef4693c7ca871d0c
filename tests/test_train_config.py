"""TrainConfig: one place for the training worker's flags; and the DDP bucket arithmetic it feeds."""

from __future__ import annotations

import argparse

import pandas as pd
import pytest

from smml_lib.distributed.analysis import ddp_allreduce_prediction
from smml_lib.distributed.train_config import TrainConfig


def _parse(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    return TrainConfig.from_args(parser.parse_args(argv))


def test_defaults_need_no_flags_and_parse_back():
    assert TrainConfig().argv() == []
    assert _parse([]) == TrainConfig()


def test_argv_round_trips_every_kind_of_field():
    cfg = TrainConfig(model="preset:Llama-3.2-1B", layers=2, strategy="ddp,fsdp", reshard_after_forward=False,
                      precision="bf16", activation_checkpointing=True, micro_batch=2, lr=3e-4, bucket_cap_mib=12.5,
                      notice_url="http://127.0.0.1:1/x")
    argv = cfg.argv()
    assert "--no-reshard-after-forward" in argv and "--activation-checkpointing" in argv
    assert argv[argv.index("--layers") + 1] == "2" and "--seq-len" not in argv  # defaults are left out
    assert _parse(argv) == cfg
    assert cfg.strategies == ["ddp", "fsdp"] and cfg.replace(layers=4).layers == 4 and cfg.layers == 2


def test_bad_values_fail_with_the_choices():
    with pytest.raises(ValueError, match="single, ddp, fsdp"):
        TrainConfig(strategy="zero9")
    with pytest.raises(ValueError, match="fp32, bf16 or auto"):
        TrainConfig(precision="fp8")


def test_auto_precision_is_bf16_on_gpus_and_fp32_on_a_cpu():
    auto = TrainConfig(precision="auto")
    assert auto.resolved_precision("cuda") == "bf16" and auto.resolved_precision("cpu") == "fp32"
    assert TrainConfig(precision="bf16").resolved_precision("cpu") == "bf16"  # asked for: kept
    assert _parse(auto.argv()).precision == "auto"  # travels to the worker unresolved


def test_ddp_buckets_are_mebibytes_and_priced_at_the_bus_bandwidth():
    # 60 MiB of fp32 gradients in 25 MiB buckets: 25 + 25 + 10 MiB = 3 buckets. At a flat 10 GB/s bus bandwidth,
    # a ring all-reduce over 2 ranks moves 2 (n - 1) / n = 1 x the bytes: 60 x 2^20 / 10e9 s = 6.291 ms.
    params = 60 * 2**20 // 4
    flat = pd.DataFrame({"op": ["all_reduce"] * 2, "size_bytes": [2**10, 2**30], "busbw_gbps": [10.0, 10.0]})
    got = ddp_allreduce_prediction(params, 2, flat)
    assert got["gradient_bytes"] == 60 * 2**20 and got["buckets"] == 3
    assert got["predicted_s"] == pytest.approx(60 * 2**20 / 10e9)
    assert ddp_allreduce_prediction(params, 2, flat, bucket_cap_mib=60)["buckets"] == 1
    assert ddp_allreduce_prediction(params, 1, flat)["predicted_s"] == 0.0  # one rank: nothing to reduce
