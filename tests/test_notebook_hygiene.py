"""Static rules every committed notebook follows (no kernel needed, runs in well under a second).

- no outputs and no execution counts are committed (executed copies go to git-ignored folders);
- the first code cell is tagged ``parameters``, holds literals only, and declares ``mode``;
- the kernel is "smml"; the notebook starts with a markdown title and ends with a ``lab.check`` cell.
"""

from __future__ import annotations

import ast

import nbformat
import pytest

from smml_lib.common.paths import repo_root
from smml_lib.course.runner import check_parameters, discover_notebooks

NOTEBOOKS = discover_notebooks(include_solutions=True)
IDS = [p.relative_to(repo_root()).as_posix() for p in NOTEBOOKS]


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _is_literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_outputs_committed(path):
    nb = nbformat.read(str(path), as_version=4)
    dirty = [i for i, c in enumerate(_code_cells(nb)) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameters_cell_is_first_and_literal(path):
    nb = nbformat.read(str(path), as_version=4)
    first = _code_cells(nb)[0]
    assert "parameters" in first.metadata.get("tags", []), f"{path.name}: first code cell is not tagged 'parameters'"
    tree = ast.parse(first.source)
    names = set()
    for stmt in tree.body:
        assert isinstance(stmt, (ast.Assign, ast.AnnAssign)), f"{path.name}: parameters cell may only assign literals"
        assert stmt.value is not None and _is_literal(stmt.value), (
            f"{path.name}: line {stmt.lineno} of the parameters cell is not a literal (papermill cannot override "
            "derived values; compute them in the next cell)")
        target = stmt.target if isinstance(stmt, ast.AnnAssign) else stmt.targets[0]
        names.add(target.id)
    assert "mode" in names, f"{path.name}: the parameters cell must declare mode"
    check_parameters(path, {"mode": "smoke"})
    from papermill.translators import PythonTranslator  # what `papermill --help-notebook` lists

    inferred = {p.name for p in PythonTranslator.inspect(first)}
    assert inferred == names, (f"{path.name}: papermill cannot read parameter(s) {sorted(names - inferred)} "
                               "(an '=' in the comment confuses its parser)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_shape_title_kernel_and_final_check(path):
    nb = nbformat.read(str(path), as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("# "), (
        f"{path.name}: the first cell must be a markdown title")
    assert nb.metadata.get("kernelspec", {}).get("name") == "smml", f"{path.name}: kernelspec must be 'smml'"
    assert "lab.check(" in _code_cells(nb)[-1].source, f"{path.name}: the last code cell must be the lab.check(...)"


def test_every_notebook_in_module_folders_is_discovered():
    on_disk = {p for p in repo_root().glob("0[0-9]_*/**/*.ipynb") if ".ipynb_checkpoints" not in p.parts}
    assert on_disk == set(NOTEBOOKS)
