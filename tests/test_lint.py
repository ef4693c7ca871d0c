"""Lint as a test: ``ruff check`` over the library, the tests and the notebooks' code cells.

The rules live in ``pyproject.toml`` (``[tool.ruff]``): pycodestyle, pyflakes, import order at 120 columns,
and ``RUF100`` for ``# noqa`` comments that silence nothing. Fix a finding with ``ruff check --fix`` where
it offers one; the message names the file, line and rule.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["smml_lib", "tests", "scripts", *sorted(p.name for p in ROOT.glob("0[0-9]_*") if p.is_dir())]


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return [str(exe)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.fail("ruff is not installed: pip install -e '.[dev]' (it is part of the dev extra)")


def test_ruff_finds_nothing():
    out = subprocess.run([*_ruff(), "check", "--no-cache", "--output-format", "concise", *TARGETS], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"ruff check found problems:\n{out.stdout}{out.stderr}"


def test_ruff_lints_the_notebooks_too():
    listed = subprocess.run([*_ruff(), "check", "--no-cache", "--show-files", *TARGETS], cwd=ROOT,
                            capture_output=True, text=True, timeout=120).stdout
    labs = sorted(ROOT.glob("0[0-9]_*/**/*.ipynb"))
    assert labs and all(str(nb) in listed for nb in labs), "ruff does not see every notebook"
