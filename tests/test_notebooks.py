"""Every notebook under the module folders runs headlessly with papermill in smoke mode, robustly.

Notebooks are discovered, so a new notebook is tested without editing this file. Each notebook runs
once, in a fresh kernel ("Restart kernel and run all"), with these extra demands (issue 7):

- **every code cell runs twice in a row** (except the parameters cell): a learner re-running a cell must
  not break the lab (stale state, double registration, files that already exist);
- the kernel's **working directory is a foreign temporary folder**, not the notebook's own: notebooks
  must find smml_lib and their data from anywhere.

The run uses the explicit kernel "smml" (checked to point at this interpreter) and the parameters CI
passes (``smml_lib.course.runner.SMOKE_PARAMETERS``), which every notebook must declare in its ``parameters``
cell. A notebook passes only if its final ``lab.check`` cell ran and passed.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import nbformat
import pytest

from smml_lib.common.paths import output_dir, repo_root
from smml_lib.course.runner import SMOKE_PARAMETERS, discover_notebooks, execute_notebook, uses_local_cluster

NOTEBOOKS = discover_notebooks(include_solutions=True)
RERUN_TAG = "smml-rerun"


def with_every_cell_twice(notebook: Path, dest: Path) -> Path:
    """A copy of ``notebook`` in which each code cell (but the parameters cell) is followed by a copy of itself."""
    nb = nbformat.read(str(notebook), as_version=4)
    cells = []
    for cell in nb.cells:
        cells.append(cell)
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type == "code" and "parameters" not in tags:
            twin = copy.deepcopy(cell)
            twin.metadata["tags"] = [*tags, RERUN_TAG]
            twin["id"] = f"{cell.get('id', 'cell')}-rerun"  # nbformat 5: every cell has a unique id
            cells.append(twin)
    nb.cells = cells
    nbformat.write(nb, str(dest))
    return dest


def _param(notebook: Path) -> object:
    """One notebook as a test case; labs that start the local Slurm cluster are marked ``cluster``."""
    marks = [pytest.mark.cluster] if uses_local_cluster(notebook) else []
    return pytest.param(notebook, marks=marks, id=notebook.relative_to(repo_root()).as_posix())


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", [_param(nb) for nb in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode_twice_per_cell_from_any_cwd(notebook, kernel_name, tmp_path):
    foreign_cwd = tmp_path / "elsewhere"
    foreign_cwd.mkdir()
    doubled = with_every_cell_twice(notebook, tmp_path / notebook.name)
    run = execute_notebook(doubled, tmp_path / f"executed-{notebook.name}", SMOKE_PARAMETERS, timeout_s=600,
                           kernel_name=kernel_name, cwd=foreign_cwd)
    if run.status != "passed":
        keep = output_dir("failed-notebooks") / notebook.name
        shutil.copy(run.output, keep)
        pytest.fail(f"{notebook.relative_to(repo_root())} failed (every cell runs twice; execution count "
                    f"{run.error_cell}, `{run.error_source}`): {run.error}\nexecuted copy: {keep}")
    assert run.checks, f"{notebook.name}: the final lab.check(...) cell produced no result"
    assert run.checks["passed"] == run.checks["total"] > 0


def test_doubling_keeps_the_parameters_cell_single(tmp_path):
    """The parameters cell must not be duplicated: a second copy would reset papermill's injected values."""
    src = NOTEBOOKS[0]
    nb = nbformat.read(str(with_every_cell_twice(src, tmp_path / "x.ipynb")), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    original = nbformat.read(str(src), as_version=4)
    n_code = sum(c.cell_type == "code" for c in original.cells)
    assert len(tagged) == 1
    assert sum(c.cell_type == "code" for c in nb.cells) == 2 * n_code - 1
