"""Run the lab notebooks headlessly with papermill: the main job behind ``smml labs``.

Each lab runs in a fresh ``smml`` kernel, in its own folder, with papermill injecting any parameters
after the cell tagged ``parameters``. Executed copies, figures and results go into a git-ignored
run folder, ``runs/<timestamp>-<mode>/``, with an ``index.html`` report (status, duration, key
figures, the failing cell and its error) and a ``summary.json``. A failing lab does not stop the
others; the command exits non-zero if any failed.

    smml labs                        # every lab on its embedded default (real on GPUs, smoke on CPU)
    smml labs --smoke                # force smoke mode (what CI does)
    smml labs --only 01_Leveraging --param model_id=/models/Llama-3.2-1B
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smml_lib.common.paths import module_dirs, repo_root
from smml_lib.course.jupyter_kernel import KERNEL_NAME, ensure_kernel
from smml_lib.course.lab import CHECK_MIME, KEY_FIGURE_MIME
from smml_lib.course.report import write_report

SMOKE_PARAMETERS: dict[str, Any] = {"mode": "smoke"}  # what CI passes to every notebook
SOLUTIONS_DIR = "solutions"


def lab_number(notebook: Path) -> str:
    """``00_Getting_Started/03_running_a_model.ipynb`` -> ``"00-3"`` (module folder, then notebook number)."""
    return f"{notebook.parent.name[:2]}-{int(notebook.name[:2])}"


def discover_notebooks(include_solutions: bool = True, only: str | None = None) -> list[Path]:
    """Every notebook under the numbered module folders, in course order (checkpoints excluded)."""
    out = []
    for mod in module_dirs():
        for nb in sorted(mod.rglob("*.ipynb")):
            rel = nb.relative_to(repo_root()).as_posix()
            if ".ipynb_checkpoints" in rel or (not include_solutions and f"/{SOLUTIONS_DIR}/" in rel):
                continue
            if only and only not in rel:
                continue
            out.append(nb)
    return out


def uses_local_cluster(notebook: Path) -> bool:
    """Whether a lab starts the local Slurm cluster (one per machine: such labs must not run at the same time)."""
    return "cluster.ensure(" in Path(notebook).read_text()


def declared_parameters(notebook: Path) -> dict[str, Any]:
    """The parameters a notebook declares in its ``parameters`` cell (name -> papermill's description)."""
    import papermill as pm  # deferred: optional extra [notebooks]

    return dict(pm.inspect_notebook(str(notebook)))


def check_parameters(notebook: Path, parameters: dict[str, Any]) -> None:
    """Fail when a notebook has no ``parameters`` cell or is passed a parameter it does not declare."""
    import nbformat  # deferred: optional extra [notebooks]

    nb = nbformat.read(str(notebook), as_version=4)
    if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells):
        raise ValueError(f"{notebook}: no cell tagged 'parameters' (papermill would inject parameters at the top)")
    unknown = set(parameters) - set(declared_parameters(notebook))
    if unknown:
        raise ValueError(f"{notebook.name}: parameters {sorted(unknown)} are not declared in its parameters cell")


@dataclass
class LabRun:
    """Outcome of one executed notebook."""

    notebook: str  # path relative to the repository
    title: str
    status: str  # "passed" or "failed"
    duration_s: float
    output: str  # executed notebook
    key_figures: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    error_cell: int | None = None  # 1-based position of the failing cell in the original notebook (all cells)
    error: str = ""
    error_source: str = ""  # first line of the failing cell's code


def notebook_title(nb: Any) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def collect_outputs(executed: Path) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """Key figures, the final check's result and the title from an executed notebook."""
    import nbformat  # deferred: optional extra [notebooks]

    nb = nbformat.read(str(executed), as_version=4)
    figures, checks = [], {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if KEY_FIGURE_MIME in data:
                figures.append(dict(data[KEY_FIGURE_MIME]))
            if CHECK_MIME in data:
                checks = dict(data[CHECK_MIME])
    return figures, checks, notebook_title(nb)


def execute_notebook(notebook: Path, output: Path, parameters: dict[str, Any] | None = None, *,
                     timeout_s: int = 1800, log_output: bool = False, cwd: Path | None = None,
                     kernel_name: str = KERNEL_NAME) -> LabRun:
    """Execute one notebook with papermill into ``output``; never raises for a failing lab, returns its ``LabRun``."""
    import papermill as pm  # deferred: optional extra [notebooks]

    parameters = dict(parameters or {})
    check_parameters(notebook, parameters)
    output.parent.mkdir(parents=True, exist_ok=True)
    rel = notebook.relative_to(repo_root()).as_posix() if notebook.is_relative_to(repo_root()) else str(notebook)
    t0 = time.perf_counter()
    error_cell, error, error_source = None, "", ""
    try:
        pm.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=kernel_name,
                            cwd=str(cwd or notebook.parent), progress_bar=False, log_output=log_output,
                            start_timeout=120, execution_timeout=timeout_s, request_save_on_cell_execute=True)
    except pm.PapermillExecutionError as exc:
        error_cell, error = _original_cell_number(output, exc.cell_index), f"{exc.ename}: {exc.evalue}"
        error_source = next((ln for ln in (exc.source or "").splitlines() if ln.strip()), "")
    except Exception as exc:  # dead kernel, timeout, missing kernel...
        error = f"{type(exc).__name__}: {exc}"
    duration = time.perf_counter() - t0
    figures, checks, title = collect_outputs(output) if output.exists() else ([], {}, "")
    return LabRun(rel, title or notebook.stem, "failed" if error else "passed", duration, str(output), figures,
                  checks, error_cell, error, error_source)


def _original_cell_number(executed: Path, cell_index: int) -> int:
    """Map papermill's cell index (which counts its injected-parameters cell) to the learner's cell number."""
    import nbformat  # deferred: optional extra [notebooks]

    try:
        cells = nbformat.read(str(executed), as_version=4).cells
    except Exception:
        return cell_index + 1
    injected = [i for i, c in enumerate(cells) if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    return cell_index + 1 - sum(1 for i in injected if i < cell_index)


def run_labs(*, only: str | None = None, parameters: dict[str, Any] | None = None, out_dir: Path | None = None,
             include_solutions: bool = False, timeout_s: int = 1800, html: bool = True) -> tuple[list[LabRun], Path]:
    """Execute every lab in course order into a run folder and write its report. Returns (runs, run folder)."""
    ensure_kernel()
    notebooks = discover_notebooks(include_solutions=include_solutions, only=only)
    if not notebooks:
        raise FileNotFoundError(f"no notebooks match {only!r}")
    parameters = dict(parameters or {})
    # --param applies to the selected labs that declare it (model_id is declared by the labs that load a model).
    declared = {nb: set(declared_parameters(nb)) for nb in notebooks} if parameters else {}
    unused = [k for k in parameters if not any(k in names for names in declared.values())]
    if unused:
        raise ValueError(f"no selected lab declares the parameter(s) {', '.join(unused)}: check the spelling "
                         "(each lab lists its parameters in its first code cell)")
    mode = parameters.get("mode", "auto")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out_dir) if out_dir else repo_root() / "runs" / f"{stamp}-{mode}"
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ["SMML_OUTPUT_DIR"] = str(run_dir / "outputs")  # kernels inherit it: figures/results land here
    started = time.time()
    runs: list[LabRun] = []
    for i, nb in enumerate(notebooks, 1):
        rel = nb.relative_to(repo_root())
        own = {k: v for k, v in parameters.items() if k in declared[nb]} if parameters else {}
        print(f"[{i}/{len(notebooks)}] {rel} ...", end=" ", flush=True)
        run = execute_notebook(nb, run_dir / "notebooks" / rel, own, timeout_s=timeout_s)
        runs.append(run)
        line = f"{run.status} in {run.duration_s:.1f} s"
        if run.error:
            line += f"\n      cell {run.error_cell} ({run.error_source[:80]}): {run.error.splitlines()[0][:300]}"
        print(line, flush=True)
    (run_dir / "summary.json").write_text(json.dumps(
        {"started": _dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"), "parameters": parameters or {},
         "labs": [asdict(r) for r in runs]}, indent=1, default=str))
    write_report(runs, run_dir, parameters or {}, html_notebooks=html)
    latest = run_dir.parent / "latest"
    if run_dir.parent == repo_root() / "runs":
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(run_dir.name)
    return runs, run_dir


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["model_id=/models/x", "steps=5"]`` -> ``{"model_id": "/models/x", "steps": 5}``: values are read as
    JSON where they parse (numbers, true/false, lists), else kept as strings (``--param`` / ``-p``)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--param expects name=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)  # numbers, true/false, lists
        except json.JSONDecodeError:
            out[k] = v  # plain strings
    return out


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml labs", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="force smoke mode (tiny model, CPU sizes)")
    p.add_argument("--only", help="run only notebooks whose path contains this text (e.g. 01_Leveraging or gemm)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter in every selected lab that declares it (e.g. model_id)")
    p.add_argument("--solutions", action="store_true", help="also run the instructors' solution notebooks")
    p.add_argument("--out", type=Path, help="run folder (default runs/<timestamp>-<mode>)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run (default 1800)")
    p.add_argument("--no-html", action="store_true", help="skip the per-lab HTML pages (faster)")
    args = p.parse_args(argv)
    params = ({**SMOKE_PARAMETERS} if args.smoke else {}) | parse_params(args.param)
    try:
        runs, run_dir = run_labs(only=args.only, parameters=params, out_dir=args.out,
                                 include_solutions=args.solutions, timeout_s=args.timeout, html=not args.no_html)
    except (ValueError, FileNotFoundError) as exc:
        print(f"smml labs: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in runs if r.status != "passed"]
    total = sum(r.duration_s for r in runs)
    print(f"\n{len(runs) - len(failed)}/{len(runs)} labs passed in {total:.0f} s")
    for r in failed:
        print(f"  FAILED {r.notebook} (cell {r.error_cell}): {r.error.splitlines()[0][:200] if r.error else ''}")
    print(f"report: {run_dir / 'index.html'}")
    return 1 if failed else 0
