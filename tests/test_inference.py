"""The hand-written generation loop: same tokens as Hugging Face, sensible timings, correct shapes."""

from __future__ import annotations

from smml_lib.models import inference, weights
from smml_lib.models.anatomy import kv_cache_bytes_per_token


def test_hand_loop_matches_generate_with_and_without_cache(tiny_model):
    model, tok = tiny_model
    ref = inference.reference_tokens(model, tok, max_new_tokens=12)
    assert inference.generated_tokens(model, tok, max_new_tokens=12) == ref
    assert inference.generated_tokens(model, tok, max_new_tokens=12, use_cache=False) == ref
    assert len(set(ref)) > 3  # the tiny model's greedy output is not one repeated token


def test_timings_and_shapes(tiny_model):
    model, tok = tiny_model
    r = inference.timed_generate(model, tok, max_new_tokens=6, batch_size=3, prompt_tokens=20)
    assert r.prompt_tokens == 20 and r.new_tokens == 6 and len(r.decode_step_s) == 5
    assert r.ttft_s > 0 and r.tpot_s > 0 and r.total_s >= r.ttft_s
    assert r.decode_tokens_per_s == 3 / r.tpot_s
    df = inference.measure_generation(model, tok, repeats=2, warmup=0, max_new_tokens=3)
    assert len(df) == 2 and {"ttft_s", "tpot_s", "decode_tokens_per_s"} <= set(df.columns)
    sweep = inference.sweep_generation(model, tok, "batch_size", [1, 2], repeats=1, warmup=0, max_new_tokens=3)
    assert sweep["batch_size"].tolist() == [1, 2]


def test_kv_cache_and_model_memory(tiny_model):
    import torch

    model, tok = tiny_model
    ids = inference.prompt_ids(tok, prompt_tokens=10)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
    assert weights.kv_cache_bytes(out.past_key_values) == 10 * kv_cache_bytes_per_token(model, "fp32")
    assert weights.model_memory_bytes(model) >= sum(p.numel() * 4 for p in model.parameters())


def test_checkpoint_inventory_without_loading(tiny_path):
    from safetensors import safe_open

    idx = weights.safetensors_index(tiny_path)
    with safe_open(str(tiny_path / "model.safetensors"), "pt") as f:
        assert set(idx["tensor"]) == set(f.keys())
    files = weights.checkpoint_files(tiny_path).set_index("file")
    assert files.loc["model.safetensors", "role"] == "weights"
    assert idx["bytes"].sum() <= files.loc["model.safetensors", "bytes"] <= idx["bytes"].sum() + 65536
