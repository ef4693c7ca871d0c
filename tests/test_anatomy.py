"""Parameter, memory and FLOP predictions from a config, against hand-computed values and a real model."""

from __future__ import annotations

import json

import pytest

from smml_lib.common import device
from smml_lib.models import anatomy, device_map


def test_llama_3_2_1b_parameters_by_hand():
    d, ff, L, h, kv, hd, V = 2048, 8192, 16, 32, 8, 64, 128256
    per_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * ff + 2 * d
    total = V * d + L * per_layer + d  # tied head adds nothing
    assert total == 1_235_814_400
    assert anatomy.count_params_from_config(anatomy.preset_config("Llama-3.2-1B")) == total


def test_llama_2_13b_does_not_fit_one_l4_in_bf16():
    cfg = anatomy.preset_config("Llama-2-13b")
    assert anatomy.count_params_from_config(cfg) == 13_015_864_320
    assert anatomy.weight_bytes(cfg, "bf16") / 1e9 == pytest.approx(26.03, abs=0.01)  # > 24 GB


def test_kv_cache_per_token_by_hand():
    assert anatomy.kv_cache_bytes_per_token(anatomy.preset_config("Llama-3.2-1B"), "bf16") == 2 * 16 * 8 * 64 * 2
    assert anatomy.kv_cache_bytes_per_token(anatomy.preset_config("Llama-2-13b"), "fp16") == 2 * 40 * 40 * 128 * 2
    mem = anatomy.inference_memory(anatomy.preset_config("Llama-3.2-1B"), "bf16", batch_size=4, context_len=1000)
    assert mem.set_index("item").loc["kv_cache", "bytes"] == 4 * 1000 * 32768


def test_forward_flops_by_hand():
    cfg = anatomy.preset_config("Llama-3.2-1B")
    matmul = 1_235_814_400 - 33 * 2048  # all but the norm vectors; the tied head multiplies once
    assert anatomy.forward_flops_per_token(cfg, 0) == 2 * matmul
    assert anatomy.forward_flops_per_token(cfg, 100) - anatomy.forward_flops_per_token(cfg, 0) == 4 * 16 * 100 * 32 * 64


def test_predictions_equal_the_tiny_models_tensors(tiny_model):
    model, _ = tiny_model
    cmp = anatomy.compare_param_counts(model.config, model).set_index("component")
    assert (cmp["difference"] == 0).all()
    assert cmp.loc["total", "measured"] == sum(p.numel() for p in model.parameters())


def test_component_names():
    assert anatomy.component_of("model.layers.3.mlp.up_proj.weight") == "mlp"
    assert anatomy.component_of("model.layers.0.self_attn.k_proj.weight") == "attention"
    assert anatomy.component_of("model.layers.0.input_layernorm.weight") == "norms"
    assert anatomy.component_of("model.embed_tokens.weight") == "embeddings"
    assert anatomy.component_of("lm_head.weight") == "lm_head"


def test_bad_dtype_and_preset_fail_clearly():
    with pytest.raises(ValueError, match="unknown dtype"):
        device.bytes_per_element("fp7")
    with pytest.raises(KeyError, match="known"):
        anatomy.preset_config("Llama-9-1T")


def test_a_local_folder_is_never_taken_for_the_preset_its_name_contains(tmp_path):
    """The rehearsal's 2-layer 13B twin was planned as the 40-layer preset its folder name contains."""
    folder = tmp_path / "twin-llama-2-13b-2-layers"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**anatomy.preset_config("Llama-2-13b"), "num_hidden_layers": 2}))
    assert anatomy.preset_config("meta-llama/Llama-2-13b-hf")["num_hidden_layers"] == 40  # a hub id: its preset
    with pytest.raises(KeyError, match="local checkpoint folder"):
        anatomy.preset_config(str(folder))
    plan = device_map.plan_device_map(str(folder), {0: "20GiB", 1: "20GiB"})
    assert plan.frame["decoder_layers"].sum() == 2 and not plan.offloaded
