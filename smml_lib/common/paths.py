"""Where things live: the course checkout, the git-ignored output folder and the cache.

Notebooks must find their data from any working directory, so nothing here depends on the
current directory. Three environment variables move things around:

- ``SMML_OUTPUT_DIR``: figures and results of lab runs (default ``<repo>/outputs``; the main job
  points it into its run folder).
- ``SMML_CACHE``: built artefacts such as the offline tiny Llama (default ``~/.cache/smml``).
- ``SMML_REPO``: the course checkout, if smml_lib was installed outside it.
"""

from __future__ import annotations

import os
from pathlib import Path

MODULE_GLOB = "0[0-9]_*"  # module folders: 00_Getting_Started, 01_Leveraging_Hardware, ...


def repo_root() -> Path:
    """Return the course checkout (the folder holding ``pyproject.toml`` and the module folders).

    With the editable install the README sets up, this is the parent of the ``smml_lib`` package.
    """
    env = os.environ.get("SMML_REPO")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parents[2]  # smml_lib/common/paths.py -> the checkout
    if (here / "pyproject.toml").exists() and any(here.glob(MODULE_GLOB)):
        return here
    raise FileNotFoundError(
        "Cannot find the SMML Lab checkout next to smml_lib. Install it editable from the checkout "
        "(bash scripts/course.sh setup, or pip install -e '.[dev]') or set SMML_REPO=/path/to/checkout."
    )


def output_dir(*parts: str) -> Path:
    """Return (and create) a folder under the git-ignored output folder, e.g. ``output_dir("figures")``."""
    env = os.environ.get("SMML_OUTPUT_DIR")
    if env:
        base = Path(env).expanduser()
    else:
        try:
            base = repo_root() / "outputs"
        except FileNotFoundError:
            base = Path.cwd() / "outputs"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the smml cache (``SMML_CACHE`` or ``~/.cache/smml``)."""
    base = Path(os.environ.get("SMML_CACHE") or Path.home() / ".cache" / "smml").expanduser()
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def reference_dir() -> Path:
    """Committed reference results measured on real GPUs (device, date and versions inside each file)."""
    return repo_root() / "assets" / "reference_results"


def module_dirs() -> list[Path]:
    """The numbered module folders of the course, in order."""
    return sorted(p for p in repo_root().glob(MODULE_GLOB) if p.is_dir())
