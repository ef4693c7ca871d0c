"""The course diagrams, drawn from source: ``smml diagrams`` writes them to ``assets/*.svg``.

Each diagram is a function in ``smml_lib/course/diagram_figures.py`` that draws on a canvas measured in
inches. To change a diagram, edit its function and run ``smml diagrams``; commit the source and the
SVGs together. CI runs ``smml diagrams --check`` (via ``tests/test_docs.py``), which fails when a
committed SVG no longer matches its source.

The SVG output is deterministic: fixed element ids (``svg.hashsalt``), no date, text kept as text
(``svg.fonttype = "none"``) and laid out with matplotlib's bundled DejaVu Sans. Every file records the
sha256 of the diagrams' source and the matplotlib version that drew it, so ``--check`` can tell a stale
diagram (the source changed) from a harmless re-rendering by another matplotlib release.

    smml diagrams                 # regenerate assets/*.svg
    smml diagrams --check         # exit 1 if any committed diagram is stale
    smml diagrams --out /tmp/d    # write elsewhere (e.g. to preview an edit)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import re
from pathlib import Path

import matplotlib

from smml_lib.common.paths import repo_root
from smml_lib.course.diagram_figures import DIAGRAMS

SOURCES = [Path(__file__), Path(__file__).with_name("diagram_figures.py")]
RC = {"svg.hashsalt": "smml-diagrams", "svg.fonttype": "none", "font.family": "DejaVu Sans", "font.size": 9,
      "path.simplify": False}


def source_digest() -> str:
    """sha256 (first 16 hex digits) of the diagrams' source (this module and ``diagram_figures``).

    A committed diagram drawn from a different source is stale."""
    h = hashlib.sha256()
    for path in SOURCES:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- rendering and the staleness check
@functools.lru_cache(maxsize=None)
def render(name: str) -> bytes:
    """The SVG bytes of one diagram (deterministic for a given matplotlib version; cached per process)."""
    with matplotlib.rc_context(RC):
        fig = DIAGRAMS[name]()
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={
            "Date": None, "Title": f"SMML Lab · {name.replace('_', ' ')}",
            "Creator": f"smml diagrams (smml_lib/course/diagrams.py) with matplotlib {matplotlib.__version__}",
            "Description": f"source-sha256:{source_digest()}; regenerate with: smml diagrams"})
    return buf.getvalue()


def assets_dir() -> Path:
    return repo_root() / "assets"


def write_all(dest: Path | None = None) -> list[Path]:
    """Render every diagram into ``dest`` (default ``assets/``); returns the written paths."""
    dest = Path(dest) if dest else assets_dir()
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in DIAGRAMS:
        path = dest / f"{name}.svg"
        path.write_bytes(render(name))
        paths.append(path)
    return paths


def _recorded(svg: bytes) -> tuple[str | None, str | None]:
    """(source digest, matplotlib version) recorded in a committed SVG."""
    text = svg.decode("utf-8", errors="replace")
    digest = re.search(r"source-sha256:([0-9a-f]+)", text)
    version = re.search(r"with matplotlib ([^<\s]+)", text)
    return (digest.group(1) if digest else None), (version.group(1) if version else None)


def check(dest: Path | None = None) -> list[tuple[str, str, bool]]:
    """Compare committed diagrams with their source. Returns ``(name, message, ok)`` per diagram.

    Identical bytes: ok. Different bytes: stale, unless the file was drawn from this very source by a
    different matplotlib version (then the difference is rendering detail, not content).
    """
    dest = Path(dest) if dest else assets_dir()
    out = []
    for name in DIAGRAMS:
        path = dest / f"{name}.svg"
        if not path.exists():
            out.append((name, f"{path} is missing: run `smml diagrams`", False))
            continue
        committed = path.read_bytes()
        if committed == render(name):
            out.append((name, "up to date", True))
            continue
        digest, version = _recorded(committed)
        if digest == source_digest() and version != matplotlib.__version__:
            out.append((name, f"same source, drawn with matplotlib {version} (this is {matplotlib.__version__})",
                        True))
        elif digest != source_digest():
            out.append((name, "stale: drawn from another version of its source (smml_lib/course/diagram_figures.py); "
                        "run `smml diagrams`", False))
        else:
            out.append((name, "stale: the file was edited by hand; edit smml_lib/course/diagram_figures.py and run "
                        "`smml diagrams`", False))
    return out


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml diagrams", description="Regenerate the course diagrams (assets/*.svg).")
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if a committed diagram is stale")
    p.add_argument("--out", type=Path, help="folder to write to (default: assets/ in the checkout)")
    p.add_argument("--list", action="store_true", help="list the diagrams and what they show")
    args = p.parse_args(argv)
    if args.list:
        for name, fn in DIAGRAMS.items():
            print(f"{name:<26} {(fn.__doc__ or '').strip()}")
        return 0
    if args.check:
        results = check(args.out)
        for name, message, ok in results:
            print(f"{'ok   ' if ok else 'STALE'} {name}.svg: {message}")
        return 0 if all(ok for *_, ok in results) else 1
    for path in write_all(args.out):
        print(f"wrote {path}")
    return 0
