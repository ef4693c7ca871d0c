"""Run a lab notebook as a plain Python program: no Jupyter, no kernel, no papermill.

The main job (``smml labs``) executes notebooks with papermill in a Jupyter kernel. Some machines have
the course's scientific stack but none of the notebook tooling: a bare GPU machine borrowed for an hour
to record the reference results, a container inside a cluster job. There this runner gives the same
lab, with the same semantics as papermill where it matters:

- the code cells run in order, in one namespace, with the notebook's folder as working directory;
- parameters given here are assigned right after the cell tagged ``parameters``, and each one must be
  declared there (a typo fails before anything runs, as with ``smml labs``);
- the first failing cell stops the run, named by its number among the notebook's cells.

What differs: output is printed, not rendered (``smml_lib.common.display`` prints outside a kernel), a cell's
last expression is printed with ``repr`` like an interactive prompt, and figures are only saved as
files by ``smml_lib.common.plots``. Lab checks still run: a lab that silently did nothing fails here too.

    python -m smml_lib.course.plainrun 01_Leveraging_Hardware/03_optimizing_llama.ipynb -p mode=real -p model_id=/m/1b
"""

from __future__ import annotations

import argparse
import ast
import json
import linecache
import os
import sys
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smml_lib.course.runner import parse_params


@dataclass
class Cell:
    number: int  # 1-based position among all the notebook's cells (markdown included), as JupyterLab counts
    source: str
    tags: list[str]


@dataclass
class PlainRun:
    notebook: str
    status: str = "running"  # "passed" | "failed"
    duration_s: float = 0.0
    cell_seconds: dict[int, float] = field(default_factory=dict)  # cell number -> seconds it took
    error_cell: int | None = None
    error: str | None = None


def code_cells(notebook: Path) -> list[Cell]:
    """The notebook's code cells, read with the standard library only (``.ipynb`` is JSON)."""
    nb = json.loads(Path(notebook).read_text())
    cells = []
    for i, c in enumerate(nb.get("cells", []), start=1):
        if c.get("cell_type") == "code":
            src = c.get("source", "")
            cells.append(Cell(i, "".join(src) if isinstance(src, list) else src, c.get("metadata", {}).get("tags", [])))
    return cells


def declared_parameters(cells: list[Cell]) -> dict[str, Any]:
    """Names assigned in the ``parameters`` cell and their default values (literals only, by convention)."""
    params = [c for c in cells if "parameters" in c.tags]
    if not params:
        raise ValueError("no cell tagged 'parameters' (every lab declares its parameters in its first code cell)")
    out: dict[str, Any] = {}
    for node in ast.parse(params[0].source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = ast.literal_eval(node.value) if node.value is not None else None
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = ast.literal_eval(node.value)
    return out


def _run_cell(source: str, namespace: dict[str, Any], label: str) -> None:
    """Execute one cell; like a notebook, a last bare expression is shown (printed here) unless it is None."""
    linecache.cache[label] = (len(source), None, source.splitlines(keepends=True), label)  # tracebacks show lines
    tree = ast.parse(source, filename=label)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    if last is not None:
        tree.body.pop()
    exec(compile(tree, label, "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), label, "eval"), namespace)
        if value is not None and not hasattr(value, "_ipython_display_"):  # quiet numbers were shown already
            print(repr(value))


def run_notebook(notebook: Path | str, parameters: dict[str, Any] | None = None) -> PlainRun:
    """Run ``notebook``'s code cells as plain Python with ``parameters`` injected; never raises for a failing lab.

    Returns a ``PlainRun`` with the status, seconds per cell and, on failure, the failing cell's
    number and traceback (also printed). The caller's working directory is restored afterwards.
    """
    notebook = Path(notebook).resolve()
    run = PlainRun(str(notebook))
    cells = code_cells(notebook)
    parameters = dict(parameters or {})
    unknown = set(parameters) - set(declared_parameters(cells))
    if unknown:
        raise ValueError(f"{notebook.name}: parameters {sorted(unknown)} are not declared in its parameters cell")
    injected = "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    # The cells run in a module of their own, installed as ``__main__`` as a kernel's namespace is: tools that
    # look a function's globals up through ``sys.modules[fn.__module__]`` (TorchDynamo, pickle) find them there.
    main, saved_main = types.ModuleType("__main__"), sys.modules.get("__main__")
    namespace: dict[str, Any] = main.__dict__
    cwd, started = os.getcwd(), time.perf_counter()
    os.chdir(notebook.parent)
    sys.modules["__main__"] = main
    try:
        for cell in cells:
            print(f"\n--- {notebook.name}: cell {cell.number} ---", flush=True)
            t0 = time.perf_counter()
            try:
                _run_cell(cell.source, namespace, f"<{notebook.name} cell {cell.number}>")
                if "parameters" in cell.tags and injected:
                    print(f"(parameters given: {', '.join(f'{k}={v!r}' for k, v in parameters.items())})")
                    _run_cell(injected, namespace, f"<{notebook.name} injected parameters>")
            except BaseException as exc:  # a lab's failure is reported, not raised
                if isinstance(exc, KeyboardInterrupt):
                    raise
                run.status, run.error_cell, run.error = "failed", cell.number, traceback.format_exc()
                print(run.error, file=sys.stderr, flush=True)
                break
            finally:
                run.cell_seconds[cell.number] = time.perf_counter() - t0
                sys.stdout.flush()
        else:
            run.status = "passed"
    finally:
        os.chdir(cwd)
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
        run.duration_s = time.perf_counter() - started
    return run


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m smml_lib.course.plainrun", description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="+", type=Path, help="lab notebooks, run one after another")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter of every given notebook that declares it (e.g. mode=real)")
    args = p.parse_args(argv)
    params = parse_params(args.param)
    declared: dict[Path, dict[str, Any]] = {}
    for nb in args.notebooks:
        if not nb.exists():
            print(f"plainrun: no notebook at {nb} (paths are relative to {Path.cwd()})", file=sys.stderr)
            return 2
        try:
            declared[nb] = declared_parameters(code_cells(nb))
        except ValueError as exc:
            print(f"plainrun: {nb}: {exc}", file=sys.stderr)
            return 2
    unused = sorted(k for k in params if not any(k in names for names in declared.values()))
    if unused:
        print(f"plainrun: no given notebook declares {unused} (each lab lists its parameters in its first code cell)",
              file=sys.stderr)
        return 2
    runs = [run_notebook(nb, {k: v for k, v in params.items() if k in names}) for nb, names in declared.items()]
    print()
    for r in runs:
        where = f" (cell {r.error_cell}: {r.error.strip().splitlines()[-1][:160]})" if r.error else ""
        print(f"{r.status.upper():6} {Path(r.notebook).name} in {r.duration_s:.1f} s{where}")
    return 0 if all(r.status == "passed" for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
