"""The course's documentation holds together: terms defined, labs linked to them, links resolving,
the README's commands real, the diagrams up to date. Static checks (no kernels): a few seconds.

- every term the course promises (issue 7) has an explicit ``<a id="slug">`` anchor in APPENDIX.md,
  inside a heading, followed by a real definition. Explicit ids matter: JupyterLab's Markdown preview
  does not give headings GitHub's lowercase slugs, so ``APPENDIX.md#kv-cache`` only lands on the term
  in JupyterLab because of the explicit anchor;
- every lab notebook links to at least one appendix entry, and every ``APPENDIX.md#anchor`` link in
  notebooks and Markdown files points at an anchor that exists;
- relative links (and images) in README, APPENDIX, INSTRUCTORS and the module READMEs resolve, and so
  do the relative links in notebooks' Markdown cells (e.g. "Next: Lab 00-2");
- the README shows both commands exactly as ``scripts/course.sh`` documents them, and ``.ci/run`` runs
  the test command; every lab is listed in the README's learning path;
- ``smml diagrams --check`` passes, and rendering is deterministic across processes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from smml_lib.common.paths import repo_root
from smml_lib.course import diagrams
from smml_lib.course.runner import discover_notebooks

ROOT = repo_root()
APPENDIX = ROOT / "APPENDIX.md"
README = ROOT / "README.md"

# Issue 7, item 2: the terms APPENDIX.md must define, by the slug the labs link to.
REQUIRED_TERMS = [
    "core", "device", "accelerator", "gpu", "node", "job", "request", "cluster", "orchestrator", "collective",
    "all-reduce", "bus-bandwidth", "mfu", "roofline", "arithmetic-intensity", "kv-cache", "prefill", "decode",
    "ttft", "tpot", "ddp", "fsdp-zero", "tensor-parallelism", "pipeline-parallelism",
]
MIN_DEFINITION_WORDS = 30

LINK_RE = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
HTML_LINK_RE = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)=["']([^"']+)["']""", re.IGNORECASE)
ANCHOR_RE = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']\s*>\s*</a>""", re.IGNORECASE)
FENCE_RE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_RE = re.compile(r"`[^`\n]*`")


def strip_code(markdown: str) -> str:
    """Markdown without fenced blocks and inline code (links inside code are not links)."""
    return CODE_RE.sub("", FENCE_RE.sub("", markdown))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: tags dropped, lowercase, punctuation removed, spaces -> '-'."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def explicit_ids(markdown: str) -> list[str]:
    return ANCHOR_RE.findall(markdown)


def anchors(path: Path) -> set[str]:
    """Every fragment that lands somewhere in a Markdown file: explicit ids and GitHub heading slugs."""
    text = path.read_text()
    found = set(explicit_ids(text))
    seen: dict[str, int] = {}
    for line in FENCE_RE.sub("", text).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def links(markdown: str) -> list[str]:
    text = strip_code(markdown)
    return LINK_RE.findall(text) + HTML_LINK_RE.findall(text)


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE))  # http:, https:, mailto:, s3:...


def markdown_cells(nb_path: Path) -> str:
    nb = nbformat.read(str(nb_path), as_version=4)
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def doc_files() -> list[Path]:
    """The course's own Markdown documents (module READMEs included, solutions folders too)."""
    files = [ROOT / "README.md", APPENDIX, ROOT / "INSTRUCTORS.md"]
    files += sorted(ROOT.glob("0[0-9]_*/**/*.md"))
    files += sorted((ROOT / "assets").glob("*.md"))
    return [f for f in files if f.exists() and ".ipynb_checkpoints" not in f.parts]


def broken_links(source: Path, text: str) -> list[str]:
    """Relative links in ``text`` (written in ``source``) whose file or anchor does not exist."""
    problems = []
    for target in links(text):
        if is_external(target):
            continue
        path_part, _, fragment = target.partition("#")
        dest = (source.parent / path_part).resolve() if path_part else source.resolve()
        if not dest.exists():
            problems.append(f"{target}: no such file {dest}")
            continue
        if fragment and dest.suffix == ".md":
            if dest == APPENDIX.resolve() and fragment not in explicit_ids(APPENDIX.read_text()):
                problems.append(f"{target}: APPENDIX.md has no <a id=\"{fragment}\"></a>")
            elif fragment not in anchors(dest):
                problems.append(f"{target}: {dest.name} has no heading or anchor #{fragment}")
    return problems


LABS = discover_notebooks(include_solutions=False)
ALL_NOTEBOOKS = discover_notebooks(include_solutions=True)
LAB_IDS = [p.relative_to(ROOT).as_posix() for p in LABS]
ALL_IDS = [p.relative_to(ROOT).as_posix() for p in ALL_NOTEBOOKS]


# ------------------------------------------------------------------ the appendix
def test_every_required_term_has_an_explicit_anchor_and_a_definition():
    text = APPENDIX.read_text()
    missing, thin, loose = [], [], []
    for term in REQUIRED_TERMS:
        m = re.search(rf'^(#{{2,4}}) +<a id="{re.escape(term)}"></a>.+$', text, re.MULTILINE)
        if not m:
            (loose if f'id="{term}"' in text else missing).append(term)
            continue
        rest = text[m.end():]
        nxt = re.search(r"^#{1,4} ", rest, re.MULTILINE)
        words = len(re.findall(r"\w+", rest[: nxt.start() if nxt else len(rest)]))
        if words < MIN_DEFINITION_WORDS:
            thin.append(f"{term} ({words} words)")
    assert not missing, f"APPENDIX.md defines no term with anchor: {missing}"
    assert not loose, f"these anchors are not inside a heading line: {loose}"
    assert not thin, f"definitions shorter than {MIN_DEFINITION_WORDS} words: {thin}"


def test_appendix_anchor_ids_are_unique_and_slug_shaped():
    ids = explicit_ids(APPENDIX.read_text())
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    bad = [i for i in ids if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", i)]
    assert not dupes, f"duplicate anchors in APPENDIX.md: {dupes}"
    assert not bad, f"anchors must be lowercase a-z, 0-9 and single hyphens: {bad}"


def test_appendix_index_lists_every_term():
    """The 'terms by topic' table at the top links every defined term, so a new term cannot hide."""
    text = APPENDIX.read_text()
    terms = re.findall(r'^#{3,4} +<a id="([^"]+)"></a>', text, re.MULTILINE)
    head = text.split('<a id="definitions"></a>')[0]
    unlisted = [t for t in terms if f"](#{t})" not in head]
    assert not unlisted, f"APPENDIX.md's 'Terms by topic' table does not list: {unlisted}"


def test_appendix_shows_every_diagram():
    text = APPENDIX.read_text()
    missing = [name for name in diagrams.DIAGRAMS if f"assets/{name}.svg" not in text]
    assert not missing, f"APPENDIX.md does not show these diagrams: {missing}"


# ------------------------------------------------------------------ labs <-> appendix
@pytest.mark.parametrize("notebook", LABS, ids=LAB_IDS)
def test_lab_links_to_the_appendix(notebook):
    found = re.findall(r"APPENDIX\.md#([\w-]+)", markdown_cells(notebook))
    assert found, (f"{notebook.name} links to no appendix entry: add a 'Terms used' line to its first cell, "
                   "e.g. [KV cache](../APPENDIX.md#kv-cache)")


@pytest.mark.parametrize("notebook", ALL_NOTEBOOKS, ids=ALL_IDS)
def test_notebook_relative_links_resolve(notebook):
    problems = broken_links(notebook, markdown_cells(notebook))
    assert not problems, f"{notebook.relative_to(ROOT)}: broken links:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_markdown_relative_links_resolve(doc):
    problems = broken_links(doc, doc.read_text())
    assert not problems, f"{doc.relative_to(ROOT)}: broken links:\n  " + "\n  ".join(problems)


def test_appendix_links_everywhere_point_at_defined_terms():
    """Catches an appendix link in any file, including ones the per-file tests do not cover."""
    ids = set(explicit_ids(APPENDIX.read_text()))
    bad = []
    sources = [(p, markdown_cells(p)) for p in ALL_NOTEBOOKS] + [(p, p.read_text()) for p in doc_files()]
    for path, text in sources:
        bad += [f"{path.relative_to(ROOT)}: #{frag}" for frag in re.findall(r"APPENDIX\.md#([\w-]+)", text)
                if frag not in ids]
    assert not bad, "links to appendix anchors that do not exist:\n  " + "\n  ".join(bad)


# ------------------------------------------------------------------ README and the two commands
def documented_commands() -> list[str]:
    """The commands scripts/course.sh documents in its header, e.g. 'bash scripts/course.sh labs'."""
    header = (ROOT / "scripts" / "course.sh").read_text().split("set -euo pipefail")[0]
    return re.findall(r"^#\s+(bash scripts/course\.sh (?:labs|test))\b", header, re.MULTILINE)


def test_readme_shows_both_commands_in_code_blocks():
    commands = documented_commands()
    assert sorted(commands) == ["bash scripts/course.sh labs", "bash scripts/course.sh test"], commands
    blocks = "\n".join(m.group(0) for m in FENCE_RE.finditer(README.read_text()))
    for cmd in commands:
        assert re.search(rf"^{re.escape(cmd)}\s*$", blocks, re.MULTILINE), f"README has no code line `{cmd}`"


def test_ci_runs_the_readme_test_command():
    run = (ROOT / ".ci" / "run").read_text()
    code = [line.strip() for line in run.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert any(re.fullmatch(r"(exec )?bash scripts/course\.sh test", line) for line in code), code


def test_documented_param_override_reaches_only_labs_that_declare_it(tmp_path, monkeypatch, capsys):
    """README/INSTRUCTORS: `labs --only 00_ --param model_id=/models/...` (lab 00-1 declares no model_id)."""
    from smml_lib.course import runner

    course = tmp_path / "course"
    (course / "00_Fake").mkdir(parents=True)
    (course / "pyproject.toml").write_text("[project]\nname='fake'\n")
    for name, params in (("01_no_model", 'mode: str = "auto"'),
                         ("02_model", 'mode: str = "auto"\nmodel_id: str = "meta-llama/Llama-3.2-1B"')):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "smml", "display_name": "Python (smml)", "language": "python"}
        cell = nbformat.v4.new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), cell]
        nbformat.write(nb, str(course / "00_Fake" / f"{name}.ipynb"))
    monkeypatch.setenv("SMML_REPO", str(course))
    seen = {}

    def fake_execute(notebook, output, parameters=None, **kwargs):
        runner.check_parameters(notebook, parameters or {})  # the real, strict check still applies per lab
        seen[notebook.name] = dict(parameters or {})
        return runner.LabRun(notebook.name, notebook.stem, "passed", 0.0, str(output))

    monkeypatch.setattr(runner, "execute_notebook", fake_execute)
    monkeypatch.setattr(runner, "ensure_kernel", lambda: None)
    monkeypatch.setattr("smml_lib.course.report.write_report", lambda *a, **k: tmp_path / "index.html")
    rc = runner.cli(["--smoke", "--only", "00_", "--param", "model_id=/models/Llama-3.2-1B",
                   "--out", str(tmp_path / "r")])
    assert rc == 0
    assert seen == {"01_no_model.ipynb": {"mode": "smoke"},
                    "02_model.ipynb": {"mode": "smoke", "model_id": "/models/Llama-3.2-1B"}}
    assert runner.cli(["--param", "modle_id=/x", "--out", str(tmp_path / "r2")]) == 2
    assert "no selected lab declares the parameter(s) modle_id" in capsys.readouterr().err


def test_readme_explains_jupyterlab_kernel_and_first_lab():
    from smml_lib.course.jupyter_kernel import DISPLAY_NAME, KERNEL_NAME

    text = README.read_text()
    first = LAB_IDS[0]
    for needle in (".venv/bin/jupyter lab", DISPLAY_NAME, f"`{KERNEL_NAME}`", first, "smml doctor", "HF_TOKEN"):
        assert needle in text, f"README does not mention {needle!r}"


def test_readme_lists_every_lab():
    text = README.read_text()
    missing = [lab for lab in LAB_IDS if f"({lab})" not in text]
    assert not missing, f"README's learning path does not link these labs: {missing}"


# ------------------------------------------------------------------ diagrams
def test_committed_diagrams_are_up_to_date():
    results = diagrams.check()
    stale = [f"{name}: {message}" for name, message, ok in results if not ok]
    assert not stale, "diagrams are stale; run `smml diagrams` and commit assets/:\n  " + "\n  ".join(stale)
    assert diagrams.cli(["--check"]) == 0


def test_diagrams_render_identically_in_another_process(tmp_path):
    """Two processes (different hash seeds) give the same bytes: no dates, random ids or set ordering."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-m", "smml_lib.cli", "diagrams", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    for name in diagrams.DIAGRAMS:
        svg = (tmp_path / f"{name}.svg").read_bytes()
        assert svg == diagrams.render(name), f"{name}.svg differs between two renderings"
        assert b"<dc:date>" not in svg


def test_check_flags_missing_edited_and_outdated_diagrams(tmp_path):
    diagrams.write_all(tmp_path)
    assert all(ok for *_, ok in diagrams.check(tmp_path))
    names = list(diagrams.DIAGRAMS)
    (tmp_path / f"{names[0]}.svg").unlink()
    edited = tmp_path / f"{names[1]}.svg"
    edited.write_bytes(edited.read_bytes().replace(b"</svg>", b"<!-- hand edit --></svg>"))
    old = tmp_path / f"{names[2]}.svg"
    old.write_bytes(old.read_bytes().replace(diagrams.source_digest().encode(), b"0123456789abcdef"))
    status = {name: (msg, ok) for name, msg, ok in diagrams.check(tmp_path)}
    assert not status[names[0]][1] and "missing" in status[names[0]][0]
    assert not status[names[1]][1] and "by hand" in status[names[1]][0]
    assert not status[names[2]][1] and "another version" in status[names[2]][0]
    assert diagrams.cli(["--check", "--out", str(tmp_path)]) == 1
