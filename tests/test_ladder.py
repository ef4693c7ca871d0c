"""The optimization ladder: step work and predictions by hand, the static decoder's tokens, rungs and batch sweep."""

from __future__ import annotations

import pandas as pd
import pytest

from smml_lib.models import anatomy, ladder
from smml_lib.models.inference import measure_memory, timed_generate
from smml_lib.models.ladder import Rung, StaticDecoder

CFG = anatomy.preset_config("Llama-3.2-1B")


def test_step_work_and_prediction_by_hand():
    cached = Rung("c", "bf16", "sdpa", True)
    w = ladder.step_work(CFG, cached, batch_size=1, context_len=100)
    assert w["flops"] == pytest.approx(anatomy.forward_flops_per_token(CFG, 100))
    kv = anatomy.kv_cache_bytes_per_token(CFG, "bf16")
    assert w["bytes"] == pytest.approx(anatomy.weight_bytes(CFG, "bf16") + 101 * kv)
    nocache = ladder.step_work(CFG, Rung("n", "bf16", "sdpa", False), batch_size=1, context_len=100)
    assert nocache["flops"] == pytest.approx(sum(anatomy.forward_flops_per_token(CFG, t) for t in range(101)))
    # L4-like ceilings: cached batch-1 decode is memory-bound, the no-cache step compute-bound
    ceil = dict(copy_gbps=300.0, matmul_tflops={"bf16": 121.0, "fp32": 30.0})
    t_cached = ladder.predict_tpot_s(CFG, cached, batch_size=1, context_len=100, **ceil)
    assert t_cached == pytest.approx(w["bytes"] / 300e9)
    t_nocache = ladder.predict_tpot_s(CFG, Rung("n", "bf16", "sdpa", False), batch_size=1, context_len=100, **ceil)
    assert t_nocache == pytest.approx(max(nocache["flops"] / 121e12, nocache["bytes"] / 300e9))
    assert ladder.bandwidth_bound_tpot_s(CFG, "bf16", 300.0) == pytest.approx(anatomy.weight_bytes(CFG, "bf16") / 300e9)
    # fp32 weights are twice the bytes: twice the bound
    bf16_s = ladder.bandwidth_bound_tpot_s(CFG, "bf16", 300.0)
    assert ladder.bandwidth_bound_tpot_s(CFG, "fp32", 300.0) == pytest.approx(2 * bf16_s)


def test_default_rungs_change_one_thing_at_a_time():
    rungs = ladder.default_rungs()
    assert [r.name for r in rungs] == ["naive", "bf16", "sdpa", "kv_cache", "static_compile"]
    assert (rungs[0].dtype, rungs[0].attn, rungs[0].use_cache) == ("fp32", "eager", False)
    assert rungs[-1].static_compile and rungs[-1].use_cache and rungs[-1].dtype == "bf16"
    assert ladder.default_rungs("fp16")[1].dtype == "fp16"


def test_static_decoder_matches_the_dynamic_loop(tiny_model):
    model, tok = tiny_model
    ref = timed_generate(model, tok, max_new_tokens=10, prompt_tokens=12)
    dec = StaticDecoder(model, max_cache_len=24, compile=None)
    g = dec.generate(tok, max_new_tokens=10, prompt_tokens=12)
    assert g.token_ids == ref.token_ids and len(g.decode_step_s) == 9 and g.ttft_s > 0
    assert dec.generate(tok, max_new_tokens=10, prompt_tokens=12).token_ids == ref.token_ids  # cache reset on reuse
    with pytest.raises(ValueError, match="max_cache_len"):
        dec.generate(tok, max_new_tokens=20, prompt_tokens=12)
    with pytest.raises(ValueError, match="compile="):
        StaticDecoder(model, max_cache_len=8, compile="everything")


def test_compiled_mlps_are_used_in_decode_only_and_restored(tiny_model):
    model, tok = tiny_model
    ref = timed_generate(model, tok, max_new_tokens=6, prompt_tokens=8).token_ids
    dec = StaticDecoder(model, max_cache_len=16, compile="mlp", backend="eager")  # eager backend: fast graph capture
    assert dec.generate(tok, max_new_tokens=6, prompt_tokens=8).token_ids == ref
    assert dec.first_call_s is not None and dec.first_call_s > 0
    assert all("forward" not in layer.mlp.__dict__ for layer in model.model.layers)


def test_measure_rung_and_ladder_on_the_tiny_model():
    rungs = [Rung("naive", "fp32", "eager", False), Rung("kv_cache", "fp32", "sdpa", True),
             Rung("static", "fp32", "sdpa", True, True)]
    df = ladder.run_ladder("tiny", rungs, prompt_tokens=8, new_tokens=6, copy_gbps=1000.0,
                           matmul_tflops={"fp32": 100.0}, repeats=1, device="cpu", compile_scope="mlp",
                           compile_backend="eager", progress=False)
    assert list(df["rung"]) == ["naive", "kv_cache", "static"]
    assert df["speedup_vs_naive"].iloc[0] == 1.0 and (df["tpot_s"] > 0).all()
    assert df["same_tokens_as_naive"].all()  # fp32 throughout: caching and compiling change no token
    assert (df["predicted_tpot_s"] <= df["tpot_s"]).all()  # a roofline bound is a lower bound
    assert df["first_call_s"].notna().iloc[-1] and df["first_call_s"].isna().iloc[0]
    assert df["pct_of_bandwidth_bound"].between(0, 100).all()
    assert set(df["model"]) == {"tiny"} and df["device_name"].iloc[0]


def test_batch_sweep_and_knee():
    from smml_lib.models.loading import load_llama

    model, tok = load_llama("tiny", device="cpu", dtype="fp32")
    sw = ladder.batch_sweep(model, tok, [1, 4], prompt_tokens=8, new_tokens=4, progress=False, copy_gbps=1000.0,
                            matmul_tflops={"fp32": 100.0})
    assert list(sw["batch_size"]) == [1, 4] and sw["tpot_vs_batch1"].iloc[0] == 1.0
    assert (sw["decode_tokens_per_s"] == sw["batch_size"] / sw["tpot_s"]).all()
    expected = ladder.predict_tpot_s(model.config, Rung("k", "fp32", "sdpa", True), batch_size=4, context_len=10,
                                     copy_gbps=1000.0, matmul_tflops={"fp32": 100.0})
    assert sw["predicted_tpot_s"].iloc[1] == pytest.approx(expected) and (sw["decode_tflops"] > 0).all()
    assert "predicted_tpot_s" not in ladder.batch_sweep(model, tok, [1], prompt_tokens=4, new_tokens=2, progress=False)
    knee = pd.DataFrame({"batch_size": [1, 8, 64, 256], "tpot_vs_batch1": [1.0, 1.1, 1.4, 3.0]})
    assert ladder.knee_batch_size(knee) == 256 and ladder.knee_batch_size(knee, tolerance=1.3) == 64
    assert ladder.knee_batch_size(knee.iloc[:2]) is None


def test_measured_memory_matches_the_config(tiny_model):
    model, tok = tiny_model
    df = measure_memory(model, tok, batch_size=2, context_len=32).set_index("item")
    assert df.loc["weights", "measured_over_predicted"] == pytest.approx(1.0, rel=1e-3)  # + rotary buffer
    assert df.loc["kv_cache", "measured_bytes"] == anatomy.kv_cache_bytes_per_token(model.config, "fp32") * 2 * 32
    assert pd.isna(df.loc["activations_peak", "measured_bytes"])  # CPU: not measured


def test_beside_reference_with_and_without_a_reference(tmp_path, monkeypatch):
    import json

    from smml_lib.perf import results

    own = pd.DataFrame({"batch_size": [1, 8], "decode_tokens_per_s": [50.0, 380.0]})
    monkeypatch.setattr(results, "reference_dir", lambda: tmp_path)
    table, note = results.beside_reference("m01_x", own, on=["batch_size"], columns=["decode_tokens_per_s"])
    assert table is None and "No committed reference result 'm01_x'" in note
    (tmp_path / "m01_x.json").write_text(json.dumps({
        "name": "m01_x", "saved_utc": "2026-01-01T00:00:00+00:00", "mode": "real",
        "env": {"device_name": "NVIDIA L4", "torch": "2.6", "driver": "550"},
        "records": [{"batch_size": 1, "decode_tokens_per_s": 60.0},
                    {"batch_size": 64, "decode_tokens_per_s": 2000.0}]}))
    table, note = results.beside_reference("m01_x", own, on=["batch_size"], columns=["decode_tokens_per_s"])
    assert "NVIDIA L4" in note and "real mode" in note
    assert list(table["batch_size"]) == [1, 8, 64]
    assert table.loc[0, "decode_tokens_per_s_reference"] == 60.0 and table.loc[1, "decode_tokens_per_s_yours"] == 380.0


def test_beside_reference_names_the_model_and_flags_a_twin(tmp_path, monkeypatch):
    import json

    from smml_lib.perf import results

    monkeypatch.setattr(results, "reference_dir", lambda: tmp_path)
    (tmp_path / "m01_y.json").write_text(json.dumps({
        "name": "m01_y", "saved_utc": "2026-01-01T00:00:00+00:00", "mode": "real",
        "env": {"device_name": "NVIDIA H200"},
        "records": [{"rung": "naive", "model": "/tmp/smml-reference/Llama-3.2-1B-twin-random-weights",
                     "decode_tokens_per_s": 40.0}]}))
    own = pd.DataFrame({"rung": ["naive"], "decode_tokens_per_s": [30.0]})
    _, note = results.beside_reference("m01_y", own, on=["rung"], columns=["decode_tokens_per_s"])
    assert "Model: Llama-3.2-1B-twin-random-weights (its architecture with random weights" in note
    assert "/tmp/smml-reference" not in note  # the recording machine's path is noise to a learner


def test_dtype_rungs_keep_rope_frequencies_in_fp32():
    """model.to(bf16) would round RoPE's inv_freq too; a checkpoint loaded in bf16 keeps it fp32, so must the ladder."""
    import torch

    from smml_lib.models.loading import load_llama

    model, _ = load_llama("tiny", dtype="fp32")
    before = model.model.rotary_emb.inv_freq.clone()
    ladder.apply_rung(model, Rung("b", "bf16", "sdpa", True))
    assert next(model.parameters()).dtype == torch.bfloat16
    for name, buf in model.named_buffers():
        if name.endswith("inv_freq"):
            assert buf.dtype == torch.float32 and torch.equal(buf, before), name
    loaded_bf16, _ = load_llama("tiny", dtype="bf16")
    assert torch.equal(loaded_bf16.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
