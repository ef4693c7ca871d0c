"""The smml command, the Jupyter kernel, and the main job's runner and report on a fake course."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from smml_lib import benchmarks
from smml_lib.course.jupyter_kernel import kernel_spec_dict
from smml_lib.course.runner import check_parameters


def _smml(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "smml_lib.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_help_lists_every_command_and_unknown_fails():
    out = _smml("--help")
    assert out.returncode == 0
    for cmd in ("doctor", "labs", "kernel", "tiny", "bench"):
        assert f"  {cmd}" in out.stdout
    assert _smml("frobnicate").returncode == 2


def test_kernel_spec_points_at_this_interpreter(kernel_name):
    assert kernel_spec_dict()["argv"][0] == sys.executable
    assert _smml("kernel").returncode == 0


def _notebook(path: Path, code: list[str], tag_params: bool = True) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "smml", "display_name": "Python (smml)", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {path.stem} title"))
    params = nbformat.v4.new_code_cell('mode: str = "auto"')
    if tag_params:
        params.metadata["tags"] = ["parameters"]
    nb.cells.append(params)
    nb.cells += [nbformat.v4.new_code_cell(c) for c in code]
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def fake_course(tmp_path):
    root = tmp_path / "course"
    (root / "00_Fake").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname='fake'\n")
    start = 'from smml_lib.course.lab import start_lab\nlab = start_lab("Fake", mode)'
    # the failing lab comes first: the one after it must still run (each lab costs a kernel start, ~5 s)
    _notebook(root / "00_Fake" / "01_bad.ipynb", [start, "x = 1", 'raise RuntimeError("boom in cell")'])
    _notebook(root / "00_Fake" / "02_after.ipynb", [start, 'lab.record("answer", 42, "units")',
                                                    'lab.check({"still ran": True})'])
    return root


def test_main_job_reports_failures_and_keeps_going(fake_course, tmp_path, kernel_name):
    out_dir = tmp_path / "run"
    res = _smml("labs", "--smoke", "--out", str(out_dir), env={"SMML_REPO": str(fake_course)})
    assert res.returncode == 1, res.stdout + res.stderr
    assert "1/2 labs passed" in res.stdout and "boom in cell" in res.stdout
    assert "cell 5 (raise RuntimeError" in res.stdout
    summary = json.loads((out_dir / "summary.json").read_text())
    status = {Path(r["notebook"]).name: r for r in summary["labs"]}
    assert status["02_after.ipynb"]["status"] == "passed"
    bad = status["01_bad.ipynb"]
    assert bad["status"] == "failed" and "RuntimeError: boom in cell" in bad["error"]
    assert bad["error_cell"] == 5  # markdown, parameters, start, x = 1, raise
    assert status["02_after.ipynb"]["key_figures"][0]["value"] == 42
    index = (out_dir / "index.html").read_text()
    assert "1/2 labs passed" in index and "boom in cell" in index and "answer" in index and "smml doctor" in index
    assert (out_dir / "notebooks" / "00_Fake" / "02_after.html").exists()


def test_parameters_must_be_declared(tmp_path):
    good = _notebook(tmp_path / "a.ipynb", ["pass"])
    check_parameters(good, {"mode": "smoke"})
    with pytest.raises(ValueError, match="not declared"):
        check_parameters(good, {"mode": "smoke", "batch": 4})
    untagged = _notebook(tmp_path / "b.ipynb", ["pass"], tag_params=False)
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        check_parameters(untagged, {"mode": "smoke"})


def test_course_script_usage():
    script = Path(__file__).resolve().parent.parent / "scripts" / "course.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "course.sh labs" in out.stdout and "course.sh test" in out.stdout
    ci = (script.parent.parent / ".ci" / "run").read_text()
    assert "exec bash scripts/course.sh test" in textwrap.dedent(ci)


def test_bench_list_names_every_benchmark_without_importing_them():
    code = ("import sys; from smml_lib import benchmarks; names = benchmarks.available(); "
            "print(sorted(names)); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.splitlines()
    files = sorted(p.stem for p in (Path(benchmarks.__file__).parent).glob("[!_]*.py"))
    assert out == [str(files), "False"]  # every module listed; none imported (no torch for a listing)
    listed = _smml("bench", "--list")
    assert listed.returncode == 0 and "serving_soak" in listed.stdout and "Soak:" in listed.stdout
    unknown = _smml("bench", "no_such")
    assert unknown.returncode == 2 and "smml bench --list" in unknown.stdout
