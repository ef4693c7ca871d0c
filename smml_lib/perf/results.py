"""Save lab results, and load them back later: the learner's own, else the committed reference.

Module 04 prices *your* throughput from Modules 01-03. Each lab saves its key tables with
``save_result(name, df)`` into ``<outputs>/results/<name>.json`` together with the environment they
were measured in. ``load_result(name)`` returns them; when the learner has not run that lab (or
ran it in smoke mode and asks for real numbers) it falls back to ``assets/reference_results/<name>.json``,
measured on a real GPU and committed with device, date and versions.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from smml_lib.common.paths import output_dir, reference_dir
from smml_lib.perf.environment import environment


@dataclass
class Result:
    name: str
    frame: Any  # pandas.DataFrame
    meta: dict[str, Any]  # env, mode, saved_utc, ...
    source: str  # "own" or "reference"
    path: Path


def _records(data: Any) -> list[dict[str, Any]]:
    if hasattr(data, "to_dict"):
        return json.loads(data.to_json(orient="records"))  # via JSON: numpy types become plain numbers
    if isinstance(data, dict):
        return [data]
    return list(data)


def save_result(name: str, data: Any, *, mode: str | None = None, env: dict[str, Any] | None = None,
                **meta: Any) -> Path:
    """Save a DataFrame (or dict / list of dicts) as ``<outputs>/results/<name>.json`` with its environment."""
    payload = {"name": name, "saved_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "mode": mode, "env": env if env is not None else environment(), **meta, "records": _records(data)}
    path = output_dir("results") / f"{name}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)  # atomic: a reader (another lab, the report) never sees a half-written file
    return path


def _read(path: Path, source: str) -> Result:
    payload = json.loads(path.read_text())
    records = payload.pop("records")
    return Result(payload.get("name", path.stem), pd.DataFrame(records), payload, source, path)


def load_result(name: str, *, prefer: str = "own", mode: str | None = None) -> Result:
    """Load a saved result.

    Args:
        name: the name given to ``save_result``.
        prefer: ``"own"`` (the learner's run, falling back to the reference) or ``"reference"``.
        mode: if given (e.g. ``"real"``), an own result from another mode is skipped in favour of the reference.

    Raises:
        FileNotFoundError: neither an own nor a reference result exists (the message says which lab makes it).
    """
    own = output_dir("results") / f"{name}.json"
    ref = reference_dir() / f"{name}.json"
    candidates = [(own, "own"), (ref, "reference")]
    if prefer == "reference":
        candidates.reverse()
    for path, source in candidates:
        if path.exists():
            res = _read(path, source)
            if source == "own" and mode and res.meta.get("mode") not in (None, mode):
                continue
            return res
    raise FileNotFoundError(f"No result {name!r}: run the lab that saves it (or the main job, "
                            f"bash scripts/course.sh labs); looked in {own} and {ref}.")


def beside_reference(name: str, own: Any, *, on: list[str], columns: list[str]) -> tuple[Any | None, str]:
    """Your measurement next to the committed reference result ``name``, joined on the ``on`` columns.

    Returns ``(table, note)``: ``table`` has ``<column>_yours`` and ``<column>_reference`` for each of
    ``columns`` (``None`` when no reference is committed yet), and ``note`` says where and when the
    reference was measured, or that there is none yet. Never raises for a missing reference.
    """
    path = reference_dir() / f"{name}.json"
    if not path.exists():
        return None, (f"No committed reference result {name!r} yet (assets/reference_results/{name}.json): only your "
                      "own measurement is shown. Reference results are measured on a real GPU and committed with "
                      "their device, date and versions.")
    ref = _read(path, "reference")
    env = ref.meta.get("env") or {}
    keep = [c for c in on + columns if c in ref.frame.columns]
    table = own[[c for c in on + columns if c in own.columns]].merge(ref.frame[keep], on=on, how="outer",
                                                                     suffixes=("_yours", "_reference"))
    note = (f"Reference {name!r}: measured on {env.get('device_name', 'an unnamed device')} "
            f"({ref.meta.get('mode') or 'unknown'} mode, {ref.meta.get('saved_utc', 'undated')}, "
            f"torch {env.get('torch', '?')}, driver {env.get('driver', '?')}).")
    if "model" in ref.frame.columns and len(ref.frame):
        model = Path(str(ref.frame["model"].iloc[0])).name  # a local folder's name, not the machine's path
        twin = " (its architecture with random weights: same speed and memory, no meaningful text)" \
            if "twin" in model.lower() else ""
        note += f" Model: {model}{twin}."
    return table, note
