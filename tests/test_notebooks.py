"""Every notebook under the module folders runs in smoke mode, headlessly, with papermill.

Notebooks are discovered, so a new notebook is tested without editing this file. Each run uses the
explicit kernel "smml" (checked to point at this interpreter), the notebook's own folder as working
directory, and the parameters CI passes (``smml_lib.labs.SMOKE_PARAMETERS``), which every notebook
must declare in its ``parameters`` cell. A notebook passes only if its final check cell ran and passed.
"""

from __future__ import annotations

import shutil

import pytest

from smml_lib.labs import SMOKE_PARAMETERS, discover_notebooks, execute_notebook
from smml_lib.paths import output_dir, repo_root

NOTEBOOKS = discover_notebooks(include_solutions=True)


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.relative_to(repo_root()).as_posix())
def test_notebook_runs_in_smoke_mode(notebook, kernel_name, tmp_path):
    run = execute_notebook(notebook, tmp_path / notebook.name, SMOKE_PARAMETERS, timeout_s=600,
                           kernel_name=kernel_name)
    if run.status != "passed":
        keep = output_dir("failed-notebooks") / notebook.name
        shutil.copy(run.output, keep)
        pytest.fail(f"{run.notebook} failed at cell {run.error_cell}: {run.error}\nexecuted copy: {keep}")
    assert run.checks, f"{run.notebook}: the final lab.check(...) cell produced no result"
    assert run.checks["passed"] == run.checks["total"] > 0
