"""Every Module 04 calculator against a case worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from smml_lib.cost import calculators, spot_economics
from smml_lib.models import scaling


def test_cost_per_million_tokens_hand_case():
    # g6.12xlarge 4.6016 $/h at 1000 tokens/s: 3.6e6 tokens per hour -> 4.6016 / 3.6 = 1.278222 $ per 1M tokens
    assert calculators.cost_per_million_tokens(4.6016, 1000) == pytest.approx(1.278222, rel=1e-6)
    # busy half of the paid time: twice the price per token
    assert calculators.cost_per_million_tokens(4.6016, 1000, utilization=0.5) == pytest.approx(2.556444, rel=1e-6)
    with pytest.raises(ValueError):
        calculators.cost_per_million_tokens(4.6016, 0)


def test_training_run_cost_hand_case():
    # 1B params on 20B tokens: C = 6 * 1e9 * 20e9 = 1.2e20 FLOPs.
    # 4 L4 x 121 TFLOP/s x MFU 0.4 = 1.936e14 FLOP/s -> 1.2e20 / 1.936e14 = 619,834.7 s = 172.1763 h
    # one g6.12xlarge at 4.6016 $/h -> 172.1763 x 4.6016 = 792.2865 $; 4 GPUs -> 688.705 GPU-hours
    r = calculators.training_run_cost(1e9, 20e9, gpus=4, peak_tflops_per_gpu=121, mfu=0.4, usd_per_instance_hour=4.6016,
                             gpus_per_instance=4)
    assert r.flops == pytest.approx(1.2e20)
    assert r.wall_h == pytest.approx(172.1763, rel=1e-6)
    assert r.gpu_hours == pytest.approx(688.7052, rel=1e-6)
    assert r.usd == pytest.approx(792.2865, rel=1e-6)
    # two instances (8 GPUs): half the wall time, same GPU-hours, same dollars
    r8 = calculators.training_run_cost(1e9, 20e9, gpus=8, peak_tflops_per_gpu=121, mfu=0.4,
                                       usd_per_instance_hour=4.6016, gpus_per_instance=4)
    assert (r8.wall_h, r8.instances, r8.usd) == pytest.approx((86.08815, 2, 792.2865), rel=1e-6)
    with pytest.raises(ValueError):
        calculators.training_run_cost(1e9, 1e9, gpus=1, peak_tflops_per_gpu=121, mfu=40, usd_per_instance_hour=1,
                             gpus_per_instance=1)


def test_training_cost_from_measured_throughput_hand_case():
    # 1e9 tokens at 10,000 tokens/s = 100,000 s = 27.7778 h; x 4.6016 $/h = 127.8222 $
    r = calculators.training_cost_from_throughput(1e9, 10_000, usd_per_instance_hour=4.6016)
    assert (r["wall_h"], r["usd"]) == pytest.approx((27.77778, 127.8222), rel=1e-6)


def test_expected_wall_time_hand_case():
    # W=10 h of work, checkpoint every tau=1 h costing delta=0.1 h, restart R=0.2 h, MTBF M=20 h:
    # one segment: M e^(R/M) (e^((tau+delta)/M) - 1) = 20 x e^0.01 x (e^0.055 - 1)
    #            = 20 x 1.0100502 x 0.0565406 = 1.1421771 h; 10 segments -> 11.421771 h
    assert spot_economics.expected_wall_time_h(10, 1, 0.1, 0.2, 20) == pytest.approx(11.421771, rel=1e-6)
    # no interruptions (M huge): only the checkpoints cost time, 10 x (1 + 0.1) = 11 h
    assert spot_economics.expected_wall_time_h(10, 1, 0.1, 0.2, 1e12) == pytest.approx(11.0, rel=1e-6)


def test_young_and_daly_intervals_hand_case():
    # Young: sqrt(2 x 0.1 h x 20 h) = sqrt(4) = 2 h
    assert spot_economics.young_interval_h(0.1, 20) == pytest.approx(2.0)
    # Daly: x = delta / 2M = 0.0025, sqrt(x) = 0.05: 2 x (1 + 0.05/3 + 0.0025/9) - 0.1 = 1.9338889 h
    assert spot_economics.daly_interval_h(0.1, 20) == pytest.approx(1.9338889, rel=1e-6)
    # the exact optimum of the expected-time model agrees with Daly to 4 decimals, and R does not move it
    assert spot_economics.optimal_interval_h(0.1, 0.2, 20) == pytest.approx(1.93389, rel=1e-4)
    assert spot_economics.optimal_interval_h(0.1, 2.0, 20) == pytest.approx(1.93389, rel=1e-4)
    sweep = spot_economics.checkpoint_interval_sweep([0.25, 1.9339, 8], work_h=10, checkpoint_cost_h=0.1,
                                                     restart_h=0.2, mtbf_h=20)
    assert sweep["expected_wall_h"].idxmin() == 1  # the U-shape: too frequent and too rare both cost more


def test_mtbf_from_monthly_interruption_share_hand_case():
    # 10 % per month: lambda = -ln(0.9) / 730 h = 0.1053605 / 730 = 1.443295e-4 per hour -> M = 6928.59 h
    assert spot_economics.mtbf_h_from_monthly_rate(0.10) == pytest.approx(6928.59, rel=1e-5)
    assert spot_economics.mtbf_h_from_monthly_rate(0.10, instances=2) == pytest.approx(3464.30, rel=1e-5)


def test_spot_run_hand_case():
    # same job as above on spot at 2.00 $/h vs on-demand 4.6016 $/h, both checkpointing every hour:
    # on-demand 11 h x 4.6016 = 50.6176 $; spot 11.421771 h x 2.00 = 22.843543 $; saves 27.774057 $ (54.87 %)
    e = spot_economics.spot_run(10, on_demand_usd_per_h=4.6016, spot_usd_per_h=2.0, mtbf_h=20, interval_h=1,
                    checkpoint_cost_h=0.1, restart_h=0.2)
    assert (e.on_demand_usd, e.spot_usd, e.savings_usd) == pytest.approx((50.6176, 22.843543, 27.774057), rel=1e-6)
    assert e.savings_fraction == pytest.approx(0.548704, rel=1e-5)
    assert e.expected_interruptions == pytest.approx(11.421771 / 20, rel=1e-6)


def test_purchase_options_break_even_hand_case():
    terms = calculators.CommitmentTerms(calculators.Assumption(0.30, "ASSUMPTION test"),
                                        calculators.Assumption(0.50, "ASSUMPTION test"))
    df = calculators.purchase_options(55.04, spot_usd_per_h=17.6289, spot_overhead=1.1, capacity_block_usd_per_h=39.33,
                             terms=terms).set_index("option")
    # 1-year at 30 % off: 38.528 $/h, break-even at 70 % of the term used; 3-year 50 % off: 27.52 $/h, 50 %
    assert df.loc["Savings Plan / RI, 1 year", ["usd_per_hour", "break_even_utilization"]].tolist() == pytest.approx(
        [38.528, 0.70])
    assert df.loc["Savings Plan / RI, 3 years", "break_even_utilization"] == pytest.approx(0.50)
    # ODCR: on-demand rate for every reserved hour -> break-even only at 100 %
    assert df.loc["On-Demand Capacity Reservation", "break_even_utilization"] == 1.0
    # Capacity Block p5 39.33 vs 55.04: 39.33 / 55.04 = 0.714571
    assert df.loc["Capacity Block for ML", "break_even_utilization"] == pytest.approx(0.714571, rel=1e-5)
    # spot per useful hour: 17.6289 x 1.1 = 19.39179
    assert df.loc["Spot (per useful hour)", "usd_per_hour"] == pytest.approx(19.39179, rel=1e-6)
    assert df["basis"].str.contains("ASSUMPTION").sum() == 2  # assumptions are labelled as such
    # monthly curves: on-demand at 365 h = 365 x 55.04 = 20,089.6 $; 1-year plan flat 730 x 38.528 = 28,125.44 $
    curve = calculators.monthly_cost_vs_usage(df.reset_index(), [365, 730]).set_index(["option", "used_h_per_month"])
    assert curve.loc[("On-Demand", 365), "usd_per_month"] == pytest.approx(20089.6)
    assert curve.loc[("Savings Plan / RI, 1 year", 365), "usd_per_month"] == pytest.approx(28125.44)


def test_idle_waste_hand_case():
    # two GPUs of a 4.6016 $/h instance counted as 2 devices -> 2.3008 $/h each
    # gpu 0: [100, 100, 0, 0] -> idle share 0.5, mean 50 %: idle 1.1504 $/h, unused 1.1504 $/h, 839.792 $/month
    # gpu 1: [2, 3, 4, 90]    -> idle share 0.75, mean 24.75 %: idle 1.7256 $/h, unused 0.7525 x 2.3008 = 1.731352 $/h
    tel = pd.DataFrame({"gpu": [0] * 4 + [1] * 4, "gpu_util_pct": [100, 100, 0, 0, 2, 3, 4, 90]})
    w = calculators.idle_waste(tel, 4.6016, devices_per_instance=2).set_index("device")
    assert w.loc[0, ["idle_share", "mean_util_pct", "idle_usd_per_h"]].tolist() == pytest.approx([0.5, 50, 1.1504])
    assert w.loc[0, "idle_usd_per_month"] == pytest.approx(839.792)
    assert w.loc[1, ["idle_share", "idle_usd_per_h", "unused_usd_per_h"]].tolist() == pytest.approx(
        [0.75, 1.7256, 1.731352], rel=1e-6)
    with pytest.raises(KeyError, match="util_col"):
        calculators.idle_waste(pd.DataFrame({"x": [1]}), 1.0)


def test_hours_per_month_convention():
    assert calculators.HOURS_PER_MONTH == 8760 / 12 and math.isclose(calculators.SECONDS_PER_HOUR, 3600)


def test_idle_waste_on_the_cpu_telemetry_backend():
    # smml_lib.perf.telemetry's CPU fallback: gpu=None, cpu_percent (100 = one core): [150, 0, 2, 80]
    # -> one device, idle share 2/4 = 0.5, mean 58 %: idle 0.5 x 1.00 = 0.50 $/h, unused 0.42 x 1.00 = 0.42 $/h
    tel = pd.DataFrame({"gpu": [None] * 4, "cpu_percent": [150.0, 0.0, 2.0, 80.0]})
    w = calculators.idle_waste(tel, 1.0).iloc[0]
    assert (w["device"], w["idle_share"], w["mean_util_pct"]) == ("all", 0.5, 58.0)
    assert (w["idle_usd_per_h"], w["unused_usd_per_h"]) == pytest.approx((0.50, 0.42))


def test_per_token_costs_and_training_table_hand_case():
    # 4.6016 $/h, 1000 tok/s on 1 of 4 GPUs: one replica 1.278222 $/1M; four replicas 1.278222 / 4 = 0.3195556 $/1M
    df = calculators.per_token_costs(pd.DataFrame({"tps": [1000.0]}), "tps", usd_per_instance_hour=4.6016,
                                     gpus_per_instance=4)
    assert df.iloc[0][["usd_per_1m_one_replica", "usd_per_1m_instance_full"]].tolist() == pytest.approx(
        [1.278222, 0.3195556], rel=1e-6)
    # the training table reuses training_run_cost: 1B x 20B tokens at MFU 0.4 on g6.12xlarge = 172.1763 h, 792.2865 $
    prices = pd.DataFrame([{"instance_type": "g6.12xlarge", "accelerator": "NVIDIA L4", "accelerators": 4,
                            "on_demand_usd_per_h": 4.6016},
                           {"instance_type": "x.unknown", "accelerator": "Mystery", "accelerators": 1,
                            "on_demand_usd_per_h": 1.0}])
    t = calculators.training_cost_table(1e9, 20e9, 0.4, prices)
    assert list(t["instance_type"]) == ["g6.12xlarge"]  # no datasheet peak for the unknown accelerator: left out
    assert t.iloc[0][["wall_h", "usd"]].tolist() == pytest.approx([172.1763, 792.2865], rel=1e-6)


def test_training_flops_do_not_overflow_with_numpy_integers():
    import numpy as np

    # 6 x 1,235,814,400 x 24,716,288,000 = 6 x 3.054475e19 = 1.832685e20 > int64's 9.2e18:
    # must be computed in floating point
    n, d = np.int64(1_235_814_400), np.int64(24_716_288_000)
    assert scaling.training_flops(n, d) == pytest.approx(1.832685e20, rel=1e-6)


def test_decode_roofline_hand_case():
    # Llama-3.2-1B bf16: 2,471,628,800 bytes of weights, 1,235,814,400 parameters; L4: 300 GB/s, 121 TFLOP/s
    # memory bound: 300e9 / 2.4716288e9 = 121.377 steps/s -> tokens/s = batch x 121.377
    # compute bound: 121e12 / (2 x 1.2358144e9) = 48,955.6 tokens/s, reached from batch ~404 on
    df = calculators.decode_roofline([1, 8, 1000], weight_bytes=2_471_628_800, params=1_235_814_400, bandwidth_gbs=300,
                            peak_tflops=121)
    assert df["decode_tokens_per_s"].tolist() == pytest.approx([121.3774, 971.0196, 48955.57], rel=1e-6)


def test_load_inputs_prefers_a_saved_result_and_labels_the_fallback(monkeypatch, tmp_path):
    from smml_lib.perf.results import save_result

    monkeypatch.setenv("SMML_OUTPUT_DIR", str(tmp_path))
    fallback = pd.DataFrame({"tokens_per_s": [1.0]})
    none = calculators.load_inputs("m04_test_no_such_result", "smoke", ["tokens_per_s"], fallback,
                                   "PREDICTION: roofline")
    assert (none.source, none.measured) == ("prediction", False) and none.frame is fallback
    assert none.label.startswith("PREDICTION: roofline") and "no saved result" in none.label
    save_result("m04_test_result", pd.DataFrame({"tokens_per_s": [123.0]}), mode="smoke", env={"device_name": "cpu"})
    own = calculators.load_inputs("m04_test_result", "smoke", ["tokens_per_s"], fallback, "ASSUMPTION: x")
    assert own.source == "own" and own.measured and own.frame["tokens_per_s"].tolist() == [123.0]
    assert "your own" in own.label and "smoke mode on cpu" in own.label
    wrong = calculators.load_inputs("m04_test_result", "smoke", ["mfu"], fallback, "ASSUMPTION: MFU 0.35")
    assert wrong.source == "assumption" and "lacks columns ['mfu']" in wrong.label
