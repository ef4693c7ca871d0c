"""The plain runner (a lab as plain Python, for machines without Jupyter), the architecture twin, and the
prepared GPU reference script in its CPU dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from smml_lib.common.paths import repo_root
from smml_lib.course import plainrun


def _notebook(path: Path, cells: list[tuple[str, str, list[str]]]) -> Path:
    nb = {"cells": [{"cell_type": kind, "source": src, "metadata": {"tags": tags}} for kind, src, tags in cells],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


@pytest.fixture
def toy(tmp_path):
    return _notebook(tmp_path / "toy.ipynb", [
        ("markdown", "# Toy lab", []),
        ("code", "x: int = 1  # a parameter\nlabel = 'a'", ["parameters"]),
        ("code", "import os\nhere = os.getcwd()\ny = x * 2\ny", []),
        ("markdown", "Check:", []),
        ("code", "assert y == 4, f'y is {y}'", []),
    ])


def test_declared_parameters_are_read_from_the_tagged_cell(toy):
    assert plainrun.declared_parameters(plainrun.code_cells(toy)) == {"x": 1, "label": "a"}


def test_parameters_are_injected_after_the_parameters_cell(toy, capsys):
    cwd = os.getcwd()
    run = plainrun.run_notebook(toy, {"x": 2})
    assert run.status == "passed" and run.error is None
    assert sorted(run.cell_seconds) == [2, 3, 5]  # cell numbers count markdown cells, as JupyterLab does
    out = capsys.readouterr().out
    assert "parameters given: x=2" in out and "\n4\n" in out  # the last expression is shown, like a notebook
    assert os.getcwd() == cwd  # the lab ran in its own folder, the caller's directory is restored


def test_a_failing_cell_is_named_and_stops_the_run(toy, capsys):
    run = plainrun.run_notebook(toy, {"x": 1})
    assert run.status == "failed" and run.error_cell == 5
    assert "AssertionError: y is 2" in run.error
    assert "assert y == 4, f'y is {y}'" in run.error  # the traceback quotes the failing line of the cell
    with pytest.raises(ValueError, match=r"\['z'\] are not declared"):
        plainrun.run_notebook(toy, {"z": 3})


def test_cells_run_in_a_main_module_of_their_own(tmp_path):
    """TorchDynamo finds a notebook function's globals through ``sys.modules[fn.__module__]``, as in a kernel."""
    nb = _notebook(tmp_path / "main.ipynb", [
        ("code", "k: int = 3", ["parameters"]),
        ("code", "import sys\ndef scaled(v):\n    return k * v\n"
                 "assert sys.modules[scaled.__module__].scaled(2) == 6", []),
    ])
    before = sys.modules["__main__"]
    assert plainrun.run_notebook(nb).status == "passed"
    assert sys.modules["__main__"] is before  # the caller's __main__ is back


def test_cli_exit_codes(toy, tmp_path, capsys):
    assert plainrun.cli([str(toy), "-p", "x=2"]) == 0
    assert plainrun.cli([str(toy), "-p", "x=1"]) == 1
    assert plainrun.cli([str(toy), "-p", "typo=1"]) == 2
    assert "no given notebook declares ['typo']" in capsys.readouterr().err
    assert plainrun.cli([str(tmp_path / "missing.ipynb")]) == 2
    no_params = _notebook(tmp_path / "np.ipynb", [("code", "a = 1", [])])
    assert plainrun.cli([str(no_params)]) == 2


def test_architecture_twin_has_the_published_shape_and_says_it_is_random(tmp_path):
    from smml_lib.models import anatomy, loading, tiny

    small = {"num_hidden_layers": 1, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 2048}
    dest = tiny.build_twin("Llama-3.2-1B", tmp_path / "twin", dtype="fp32", overrides=small)
    model, tok = loading.load_llama(str(dest), dtype="fp32")
    cfg = model.config.to_dict()
    published = anatomy.preset_config("Llama-3.2-1B")
    for key in ("tie_word_embeddings", "max_position_embeddings", "rms_norm_eps"):
        assert cfg[key] == published[key], key
    assert cfg["num_hidden_layers"] == 1 and cfg["vocab_size"] == 2048
    assert sum(p.numel() for p in model.parameters()) == anatomy.count_params_from_config(cfg)
    note = (dest / "SMML_TWIN.md").read_text()
    assert "RANDOM weights" in note and "num_hidden_layers" in note
    ids = tok("Hello", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    assert len(tok) == 2048 and tok("Hello").input_ids == ids[0].tolist()  # padded, encoding unchanged
    texts = tok.convert_ids_to_tokens(list(range(2048)))  # every id the model can produce decodes to text
    assert None not in texts and tok.decode([2047]) == "<|twin_2047|>"
    with pytest.raises(KeyError, match="no preset"):
        tiny.build_twin("Llama-9-999B", tmp_path / "x")


def test_gpu_reference_script_dry_run_on_cpu(tmp_path):
    """The prepared GPU script, in its CPU dry run: a lab through the plain runner, results packed for $OUT."""
    out, ref = tmp_path / "out", tmp_path / "ref"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "SMML_REF_DIR": str(ref), "SMML_REF_MODE": "smoke", "PYTHON": sys.executable}
    script = repo_root() / "scripts" / "gpu_reference.sh"
    bad = subprocess.run(["bash", str(script), "nonsense"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown step nonsense" in bad.stderr
    # lab01-1: the shortest Module 01 lab (the notebook tests run all of them)
    proc = subprocess.run(["bash", str(script), "env", "lab01-1"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "=== lab01-1: rc=0" in proc.stdout and "PASSED 01_llama_on_one_gpu.ipynb" in proc.stdout
    with tarfile.open(out / "reference.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"./results/m01_llama_generation.json", "./logs/env.log", "./logs/lab01-1.log"} <= names


def test_twin_on_cuda_without_a_gpu_says_what_to_do(tmp_path, monkeypatch, capsys):
    import torch

    from smml_lib.models import tiny

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        tiny.cli(["--twin", "Llama-3.2-1B", "--dest", str(tmp_path / "t"), "--device", "cuda"])
    assert exc.value.code == 2 and "use --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()  # refused before building anything
