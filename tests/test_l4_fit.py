"""Every lab's real mode fits one 24 GB L4 on paper (CPU only, seconds): the peak predicted from the published
configs and each lab's parameters cell stays under the card (22.35 GiB as EC2 reports it) with a stated margin."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from smml_lib.common.paths import repo_root
from smml_lib.course import l4_fit
from smml_lib.course.runner import discover_notebooks
from smml_lib.models import anatomy, device_map

SPLIT_LAB = "02_Multi-Accelerator_Distribution/01_big_model_on_four_gpus.ipynb"


def test_every_lab_is_fitted_or_declared_free_of_gpu_memory():
    labs = {p.relative_to(repo_root()).as_posix() for p in discover_notebooks(include_solutions=False)}
    assert labs == set(l4_fit.ESTIMATORS) | set(l4_fit.NO_GPU_MEMORY)


def test_real_configs_are_the_published_models_on_the_meta_device():
    """The presets the fit uses build, on the meta device, the published parameter counts."""
    for name, published in (("Llama-3.2-1B", 1_235_814_400), ("Llama-2-13b", 13_015_864_320)):
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig(**anatomy.preset_config(name)))
        counted = sum(p.numel() for p in model.parameters())  # tied embeddings count once
        assert counted == published == anatomy.count_params_from_config(anatomy.preset_config(name)), name


def test_every_real_mode_lab_fits_one_l4_with_the_margin():
    table = l4_fit.fit_table()
    assert len(table) >= len(l4_fit.ESTIMATORS)
    assert (table["peak_gib"] > l4_fit.CUDA_CONTEXT_GIB).all()
    too_big = table[~table["fits"]]
    assert too_big.empty, "\n".join(
        f"Lab {r.lab} ({r.notebook}, cell {r.cell_id}): {r.step} needs {r.peak_gib:.2f} GiB of an L4's "
        f"{r.card_gib:.2f} GiB: less than {100 * l4_fit.MARGIN_FRACTION:.0f}% free" for r in too_big.itertuples())


def test_13b_split_over_four_l4s_is_planned_by_accelerate_and_fits():
    params = l4_fit.notebook_params(SPLIT_LAB)
    budget = {i: params["gpu_budget"] for i in range(params["num_gpus"])}
    plan = device_map.plan_device_map("Llama-2-13b", budget, dtype="bf16")  # infer_auto_device_map, meta device
    assert not plan.offloaded and plan.num_devices_used == params["num_gpus"] == 4
    per_gpu_gib = plan.frame.set_index("device")["predicted_bytes"] / l4_fit.GIB
    assert abs(per_gpu_gib.sum() - 13_015_864_320 * 2 / l4_fit.GIB) < 0.01
    assert (per_gpu_gib + l4_fit.CUDA_CONTEXT_GIB < (1 - l4_fit.MARGIN_FRACTION) * l4_fit.L4_USABLE_GIB).all()


def test_a_lab_whose_real_sizes_do_not_fit_is_named_with_its_cell():
    lab = "01_Leveraging_Hardware/03_optimizing_llama.ipynb"
    table = l4_fit.fit_table({lab: {"batch_sizes": [1, 8192]}})
    bad = table[~table["fits"]]
    assert list(bad["lab"]) == ["01-3"] and list(bad["cell_id"]) == ["b1c9ec58"]
    assert bad["peak_gib"].iloc[0] > l4_fit.L4_USABLE_GIB
    split = l4_fit.fit_table({SPLIT_LAB: {"gpu_budget": "60GiB", "num_gpus": 1}})
    assert not split.set_index("cell_id").loc["8852d111", "fits"]  # the whole 13B on one "GPU"
