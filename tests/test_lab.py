"""The lab frame: modes, key figures, the final check, results, plots and exercises."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from smml_lib.common import plots
from smml_lib.course import exercises
from smml_lib.course.lab import LabCheckError, resolve_mode, start_lab
from smml_lib.perf import results


def test_modes():
    assert resolve_mode("auto") == "smoke"  # tests hide GPUs
    assert resolve_mode("real") == "real"
    with pytest.raises(ValueError, match="auto, real, smoke"):
        resolve_mode("fast")


def test_lab_picks_by_mode_and_records_figures(capsys):
    lab = start_lab("Lab 99-1 · test", "smoke")
    assert lab.smoke and not lab.gpu
    assert lab.pick(smoke=1, real=2) == 1 and lab.model_id("meta-llama/Llama-3.2-1B") == "tiny"
    value = lab.record("throughput", 12.5, "tokens/s", "a note")
    assert value == 12.5 and value + 1 == 13.5
    assert lab.figures["throughput"]["unit"] == "tokens/s"
    assert "throughput = 12.5 tokens/s" in capsys.readouterr().out
    real = start_lab("Lab 99-2 · test", "real")
    assert real.model_id("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"


def test_check_passes_and_fails_loudly(capsys):
    lab = start_lab("Lab 99-3 · test", "smoke")
    lab.check({"a holds": True, "b holds": 1 > 0})
    assert "2/2 checks passed" in capsys.readouterr().out
    with pytest.raises(LabCheckError, match="b fails"):
        lab.check({"a holds": True, "b fails": False})
    with pytest.raises(LabCheckError):
        lab.check({})


def test_results_own_then_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("SMML_OUTPUT_DIR", str(tmp_path / "out"))
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    monkeypatch.setattr(results, "reference_dir", lambda: ref_dir)
    with pytest.raises(FileNotFoundError, match="run the lab"):
        results.load_result("m99_x")
    (ref_dir / "m99_x.json").write_text(json.dumps({"name": "m99_x", "mode": "real", "env": {"device_name": "L4"},
                                                    "records": [{"a": 1}]}))
    assert results.load_result("m99_x").source == "reference"
    results.save_result("m99_x", pd.DataFrame({"a": [2, 3]}), mode="smoke")
    own = results.load_result("m99_x")
    assert own.source == "own" and own.frame["a"].tolist() == [2, 3] and "torch" in own.meta["env"]
    assert results.load_result("m99_x", mode="real").source == "reference"  # own result is smoke-mode
    assert results.load_result("m99_x", prefer="reference").frame["a"].tolist() == [1]


def test_plots_save_png(tmp_path, monkeypatch):
    monkeypatch.setenv("SMML_OUTPUT_DIR", str(tmp_path))
    df = pd.DataFrame({"batch": [1, 4, 16], "tokens_per_s": [10.0, 35.0, 90.0], "kind": ["a", "a", "a"]})
    plots.line(df, "batch", "tokens_per_s", logx=True, name="t_line")
    plots.bars(df, "batch", "tokens_per_s", name="t_bars")
    fig, ax = plots.figure(1, 2)
    path = plots.finish(fig, "t_grid", caption="test")
    for name in ("t_line", "t_bars", "t_grid"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000
    assert path == tmp_path / "figures" / "t_grid.png"


def test_exercise_checks():
    assert exercises.check_number("t.a", None, 10).status == "unanswered"
    assert exercises.check_number("t.a", 10.4, 10, rtol=0.05).ok
    bad = exercises.check_number("t.a", 20, 10, rtol=0.05, why="because")
    assert bad.status == "incorrect" and "+100%" in bad.message and "because" in bad.message
    assert exercises.check_number("t.a", "ten", 10).status == "incorrect"
    assert exercises.check_choice("t.b", "B", "b", ["a", "b"]).ok
    assert not exercises.check_choice("t.b", "a", "b", ["a", "b"]).ok
    assert exercises.check_choice("t.b", "z", "b", ["a", "b"]).status == "incorrect"


def test_checks_that_need_a_gpu_are_listed_not_judged_in_real_mode_on_a_cpu(capsys):
    real = start_lab("Lab 99-3 · rehearsal", "real")  # tests hide GPUs: real mode on the CPU
    real.check({"counted": True, "a GPU speedup": False}, needs_gpu={"a GPU speedup"})
    out = capsys.readouterr().out
    assert "1/1 checks passed" in out and "1 need a GPU" in out and "a GPU speedup  (needs a GPU" in out
    with pytest.raises(LabCheckError, match="counted"):  # every other check is still judged
        real.check({"counted": False, "a GPU speedup": False}, needs_gpu={"a GPU speedup"})
    smoke = start_lab("Lab 99-3 · smoke", "smoke")  # smoke mode judges them, as before
    with pytest.raises(LabCheckError, match="a GPU speedup"):
        smoke.check({"counted": True, "a GPU speedup": False}, needs_gpu={"a GPU speedup"})
    with pytest.raises(ValueError, match="not in the check"):
        smoke.check({"counted": True}, needs_gpu={"typo"})
