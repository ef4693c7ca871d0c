"""Memory planner: hand-computed totals, and predictions checked tensor by tensor against the tiny Llama.

The measured side counts the actual tensors (``smml_lib.perf.memtrack``): parameters, gradients, Adam states
after a real optimizer step, and everything autograd saved in a real forward. The issue's target is
15 %; on these cases the planner is expected within 2 %.
"""

from __future__ import annotations

import pytest
import torch

from smml_lib.models import planner
from smml_lib.models.anatomy import count_params_from_config, preset_config
from smml_lib.perf import memtrack


def test_sixteen_bytes_per_parameter_and_zero_stages():
    cfg = preset_config("Llama-3.2-1B")
    P = count_params_from_config(cfg)
    ddp = planner.training_memory(cfg, strategy="ddp", num_gpus=4, micro_batch=1, seq_len=16).set_index("component")
    assert ddp.loc[["weights", "gradients", "optimizer"], "bytes"].sum() == pytest.approx(16 * P)
    for strategy, sharded in [("zero1", ["optimizer"]), ("zero2", ["gradients", "optimizer"]),
                              ("fsdp", ["weights", "gradients", "optimizer"])]:
        df = planner.training_memory(cfg, strategy=strategy, num_gpus=4, micro_batch=1, seq_len=16)
        df = df.set_index("component")
        for comp in ("weights", "gradients", "optimizer"):
            ratio = df.loc[comp, "bytes"] / ddp.loc[comp, "bytes"]
            assert ratio == pytest.approx(0.25 if comp in sharded else 1.0), (strategy, comp)
    with pytest.raises(ValueError, match="strategy"):
        planner.training_memory(cfg, strategy="zero4")


def test_gradient_accumulation_holds_gradients_and_activations_together():
    """Single-GPU GPU peak, by hand: max(live activations, gradients) per step; accumulating, their sum."""
    from smml_lib.models.anatomy import param_counts

    cfg = preset_config("Llama-3.2-1B")
    P, V, d = count_params_from_config(cfg), cfg["vocab_size"], cfg["hidden_size"]
    tokens = 2 * 1024
    act = planner.activation_bytes(cfg, tokens, "autocast")
    comp = param_counts(cfg).set_index("component")["params"]
    copies = 2 * (comp["attention"] + comp["mlp"] + V * d)  # autocast's bf16 weight copies
    live = act["saved"] + tokens * V * (4 + 2) + act["recompute"] + 4 * V * d  # + fp32/bf16 logits grads + head grad
    kw = dict(strategy="single", micro_batch=2, seq_len=1024, precision="bf16")
    one = planner.training_memory(cfg, **kw)
    accum = planner.training_memory(cfg, grad_accum=8, **kw)
    assert one.attrs["peak_bytes"] == pytest.approx(4 * P + 8 * P + copies + max(live, 4 * P))
    assert accum.attrs["peak_bytes"] == pytest.approx(4 * P + 8 * P + copies + live + 4 * P)
    assert accum.attrs["tensors_bytes"] == one.attrs["tensors_bytes"]  # the CPU total holds everything already
    ddp = dict(strategy="ddp", num_gpus=4, micro_batch=2, seq_len=1024)
    assert planner.training_memory(cfg, grad_accum=8, **ddp).attrs["peak_bytes"] == pytest.approx(
        planner.training_memory(cfg, **ddp).attrs["peak_bytes"])  # DDP's gradient buckets were counted already


def test_activation_elements_hand_computed():
    # tiny: d=256, 8 heads x 32, 4 kv heads x 32, ff=688, vocab 1024
    # fp32 layer: 6d + 2*256 (q, attention output) + 2*128 (k, v) + 4*688 + 8 (log-sum-exp per head)
    from smml_lib.models.tiny import TINY_CONFIG

    cfg = {**TINY_CONFIG, "vocab_size": 1024}
    per = planner.activation_elements_per_token(cfg, "fp32")
    assert per["layer"] == {4: 6 * 256 + 512 + 256 + 4 * 688 + 8}
    assert per["final"] == {4: 3 * 256 + 2 * 1024}
    ac = planner.activation_bytes(cfg, tokens=100, mode="fp32", activation_checkpointing=True)
    assert ac["saved"] == 100 * (4 * 256 * 4 + 4 * (3 * 256 + 2 * 1024))  # layer inputs + the head's tensors


def test_13b_needs_more_than_one_l4():
    cfg = preset_config("Llama-2-13b")
    one = planner.inference_memory(cfg, dtype="bf16", batch_size=1, context_len=2048, num_gpus=1)
    assert one.set_index("item").loc["weights", "gb"] == pytest.approx(26.03, abs=0.01)  # 13.016e9 params x 2 B
    assert one.attrs["fits"] is False and one.attrs["headroom_bytes"] < -3e9
    four = planner.inference_memory(cfg, dtype="bf16", batch_size=1, context_len=2048, num_gpus=4)
    assert four.attrs["fits"] is True
    assert "does NOT fit" in planner.fits(30e9, "L4").message()


def _measure(model, precision: str, checkpointing: bool, tokens: tuple[int, int] = (2, 32)):
    """One real training step of ``model`` on the CPU; returns the measured tensor bytes."""
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 1000, tokens)
    held: list = []
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast")
    with memtrack.saved_activations(model, held) as acts:
        with amp:
            logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), x.view(-1))
        held.append(logits)
    loss.backward()
    opt.step()
    st = memtrack.state_bytes(model, opt)
    return st.total + acts.bytes


@pytest.mark.parametrize("precision,checkpointing", [("fp32", False), ("autocast", False), ("fp32", True),
                                                     ("bf16", False)])
def test_prediction_matches_measured_tensors(tiny_path, precision, checkpointing):
    from smml_lib.models.loading import load_llama

    model, _ = load_llama(str(tiny_path), dtype="bf16" if precision == "bf16" else "fp32", device="cpu",
                          attn_implementation="sdpa")
    model.config.use_cache = False
    measured = _measure(model, precision, checkpointing)
    pred = planner.training_memory(model.config, strategy="single", micro_batch=2, seq_len=32,
                                   precision="fp32" if precision == "fp32" else "bf16",
                                   activation_checkpointing=checkpointing)
    if precision == "bf16":  # a bf16 model (FSDP's compute dtype): bf16 weights, grads and Adam states
        per = planner.activation_bytes(model.config, 64, "bf16")["saved"]
        expected = 2 * 4 * count_params_from_config(model.config) + per  # 4 tensors per parameter, 2 bytes each
    else:
        expected = pred.attrs["tensors_bytes"]
    assert abs(expected / measured - 1) < 0.02, (expected, measured)
