"""Predicted real-mode durations on a g6.12xlarge: roofline arithmetic, and the README / INSTRUCTORS tables
showing exactly what ``smml_lib.course.durations`` predicts (labelled predicted until measured)."""

from __future__ import annotations

import re

from smml_lib.common.paths import repo_root
from smml_lib.course import durations
from smml_lib.course.runner import discover_notebooks
from smml_lib.models import anatomy


def test_every_lab_has_a_positive_prediction():
    labs = {p.relative_to(repo_root()).as_posix() for p in discover_notebooks(include_solutions=False)}
    assert set(durations.LABS.values()) == labs
    minutes = durations.predicted_minutes()
    assert all(m >= 0.5 for m in minutes.values())
    assert minutes["02-1"] * 60 > durations.download_s(durations.BIG) > 250  # 26 GB at 100 MB/s


def test_roofline_of_decode_and_prefill_on_an_l4():
    one = durations.ONE_B
    decode = durations.forward_s(one, tokens=1) - durations.FORWARD_OVERHEAD_S
    assert abs(decode - anatomy.weight_bytes(one, "bf16") / 300e9) / decode < 0.01  # memory-bound: 8.2 ms
    prefill = durations.forward_s(one, tokens=4096) - durations.FORWARD_OVERHEAD_S
    assert abs(prefill - 4096 * anatomy.forward_flops_per_token(one, 2048) / 121e12) / prefill < 0.01  # compute
    assert durations.generate_s(one, prompt=512, new=32, cache=False) > durations.generate_s(one, prompt=512, new=32)


def test_readme_and_instructors_show_the_predicted_minutes():
    minutes = durations.predicted_minutes()
    readme = (repo_root() / "README.md").read_text()
    instructors = (repo_root() / "INSTRUCTORS.md").read_text()
    assert "predicted until measured" in readme and "predicted until measured" in instructors
    for lab, nb in durations.LABS.items():
        shown = re.search(re.escape(f"({nb}) (") + r"\d+ min; run ([\d.]+) min[,)]", readme)
        assert shown and float(shown.group(1)) == minutes[lab], f"README: run time of {lab}"
        row = re.search(r"^\| \[" + re.escape(lab) + r" · .*?\| ([\d.]+) min \(predicted\) \|", instructors, re.M)
        assert row and float(row.group(1)) == minutes[lab], f"INSTRUCTORS: run time of {lab}"
    assert f"In all {sum(minutes.values()):g} min." in instructors
