"""The library's architecture, enforced: layers that point one way, no import cycles, no private imports.

Each package's ``__init__`` docstring has a line ``May import: a, b.`` naming the packages it may use
besides itself (``nothing`` for none): that line is the rule, this test reads it from there, so the
documentation and the check cannot drift apart. ``smml_lib.distributed.workers`` is a layer of its own
above ``distributed`` and ``checkpoint`` (the modules torchrun runs use both); the root modules
(``smml_lib``, ``smml_lib.cli``) may import anything.

Imports are read from the source with ``ast``, at module level and inside functions alike. An import of
another ``smml_lib`` module belongs at module level; a third-party import inside a function must say
why it is deferred in a comment on its line or the line above (an optional extra such as boto3 or
fastapi, a GPU-only path, a heavy library most callers never need). The entry points that start most often
(a hello rank, a lab's first imports) are imported in a fresh interpreter to show they leave transformers and
``torch.distributed.checkpoint`` unimported.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import smml_lib

LIB = Path(smml_lib.__file__).resolve().parent
ROOT = LIB.parent
ROOT_MODULES = {"smml_lib", "smml_lib.cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(LIB.rglob("*.py"))}
PACKAGES = sorted(m for m, p in MODULES.items() if p.name == "__init__.py" and m not in ROOT_MODULES)


def unit_of(module: str) -> str:
    """The package (layer) a module belongs to: the longest package name that is a prefix of it."""
    if module in ROOT_MODULES:
        return "smml_lib"
    best = ""
    for pkg in PACKAGES:
        if (module == pkg or module.startswith(pkg + ".")) and len(pkg) > len(best):
            best = pkg
    return best


def short(pkg: str) -> str:
    return pkg.removeprefix("smml_lib.")


def allowed_imports(pkg: str) -> set[str]:
    doc = ast.get_docstring(ast.parse(MODULES[pkg].read_text())) or ""
    m = re.search(r"^May import: (.+?)\.?$", doc, re.M)
    assert m, f"{MODULES[pkg]}: the docstring needs a line 'May import: <packages>.' (or 'May import: nothing.')"
    names = [n.strip(" `") for n in m.group(1).split(",")]
    return set() if names == ["nothing"] else {"smml_lib." + n for n in names}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported smml_lib module (or package)
    names: tuple[str, ...]  # names taken with ``from target import ...``
    line: int
    top_level: bool


def _resolve(source: str, node: ast.ImportFrom | ast.Import) -> list[tuple[str, tuple[str, ...]]]:
    if isinstance(node, ast.Import):
        return [(a.name, ()) for a in node.names if a.name.split(".")[0] == "smml_lib"]
    base = node.module or ""
    if node.level:
        pkg = source.split(".") if MODULES[source].name == "__init__.py" else source.split(".")[:-1]
        base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != "smml_lib":
        return []
    out = []
    for alias in node.names:  # ``from pkg import module`` imports the module, ``from module import name`` a name
        sub = f"{base}.{alias.name}"
        out.append((sub, ()) if sub in MODULES else (base, (alias.name,)))
    return out


def _imports_with_scope(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement, and whether it runs at import time (not inside a function)."""
    out: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append((child, not in_function))
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return out


def imports_of(module: str) -> list[Import]:
    out = []
    for node, top_level in _imports_with_scope(ast.parse(MODULES[module].read_text())):
        for target, names in _resolve(module, node):
            if target != module:
                out.append(Import(module, target, names, node.lineno, top_level))
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_package_states_what_it_may_import():
    for pkg in PACKAGES:
        unknown = {p for p in allowed_imports(pkg) if p not in PACKAGES}
        assert not unknown, f"{pkg}: 'May import' names unknown packages {sorted(unknown)}"


def test_imports_point_down_the_layers():
    wrong = []
    for module, edges in GRAPH.items():
        src = unit_of(module)
        if src == "smml_lib":
            continue
        ok = allowed_imports(src) | {src}
        for e in edges:
            dst = unit_of(e.target)
            if dst not in ok and dst != "smml_lib":
                wrong.append(f"{module}:{e.line} imports {e.target} ({short(src)} may import: "
                             f"{', '.join(sorted(short(p) for p in allowed_imports(src))) or 'nothing'})")
            if dst == "smml_lib" and (e.names != ("__version__",)):
                wrong.append(f"{module}:{e.line} imports {e.target} {e.names}: only __version__ lives at the root")
    assert not wrong, "imports that point up or sideways:\n  " + "\n  ".join(wrong)


def test_package_layers_form_no_cycle():
    deps = {pkg: allowed_imports(pkg) for pkg in PACKAGES}
    state: dict[str, int] = {}

    def visit(pkg: str, path: list[str]) -> None:
        if state.get(pkg) == 1:
            pytest.fail("the layers form a cycle: " + " -> ".join(short(p) for p in path + [pkg]))
        if state.get(pkg) == 2:
            return
        state[pkg] = 1
        for dep in sorted(deps[pkg]):
            visit(dep, path + [pkg])
        state[pkg] = 2

    for pkg in PACKAGES:
        visit(pkg, [])


def test_no_module_import_cycles():
    """Tarjan's strongly connected components over every import (module level and inside functions)."""
    edges = {m: sorted({e.target for e in GRAPH[m] if e.target in MODULES}) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in MODULES:
        if m not in index:
            strong(m)
    assert not cycles, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in cycles)


def test_library_imports_sit_at_module_level():
    inner = [f"{e.source}:{e.line} imports {e.target} inside a function"
             for edges in GRAPH.values() for e in edges if not e.top_level]
    assert not inner, "move these imports to the top of the module:\n  " + "\n  ".join(inner)


def _deferred_third_party(path: Path) -> list[str]:
    src = path.read_text()
    lines = src.splitlines()
    bad = []
    for node, top_level in _imports_with_scope(ast.parse(src)):
        if top_level:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("smml_lib", "__future__"):
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            continue
        here, above = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
        if "#" not in here and not above.strip().startswith("#"):
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {here.strip()}")
    return bad


def test_deferred_imports_say_why():
    bad = [b for p in MODULES.values() for b in _deferred_third_party(p)]
    assert not bad, ("imports inside functions need a comment saying why they are deferred (optional extra, "
                     "GPU-only, heavy), or belong at the top of the module:\n  " + "\n  ".join(bad))


def _private_uses(path: Path) -> list[str]:
    """``from smml_lib.x import _y`` and ``x._y`` where ``x`` names an imported smml_lib module."""
    tree = ast.parse(path.read_text())
    module_aliases: set[str] = set()
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("smml_lib"):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports private {node.module}.{a.name}")
                if f"{node.module}.{a.name}" in MODULES:
                    module_aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("smml_lib") and a.asname:
                    module_aliases.add(a.asname)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses private {node.value.id}.{node.attr}")
    return bad


def test_no_private_name_is_used_across_modules():
    files = list(MODULES.values()) + sorted((ROOT / "tests").glob("*.py"))
    bad = [b for p in files for b in _private_uses(p)]
    assert not bad, "private names used outside their module (make them public or keep them inside):\n  " + \
        "\n  ".join(bad)


def test_docstrings_map_the_library():
    """The root docstring names every package; each package's docstring names each of its modules."""
    named_root = set(re.findall(r"``([\w.]+)``", smml_lib.__doc__ or ""))
    missing = [short(p) for p in PACKAGES if short(p) not in named_root]
    for pkg in PACKAGES:
        doc = ast.get_docstring(ast.parse(MODULES[pkg].read_text())) or ""
        named = set(re.findall(r"``([\w.]+)``", doc))
        for m in MODULES:
            if m.rsplit(".", 1)[0] == pkg and MODULES[m].name != "__init__.py" and m.rsplit(".", 1)[1] not in named:
                missing.append(m)
    assert not missing, "not described in the package docstrings: " + ", ".join(missing)


def test_modules_stay_small_or_say_why():
    long = []
    for m, p in MODULES.items():
        n = len(p.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        if n > 320 and "Longer than" not in doc:
            long.append(f"{m}: {n} lines")
    assert not long, ("modules over ~300 lines: split them, or say in the docstring why not "
                      "('Longer than ~300 lines because ...'):\n  " + "\n  ".join(long))


# Processes that start often and need no model: each is imported in a fresh interpreter, and none of these
# heavy libraries may come with it. A torchrun rank of the hello worker pays for every import once per rank
# per launch, a notebook kernel once per lab; `transformers`' Llama classes cost about 3 s of CPU on a 2-core
# machine and `torch.distributed.checkpoint` about 0.8 s. Modules that build or load a model import them
# inside the function that does (the deferral is commented there).
LIGHT_IMPORTS = {
    "smml_lib.distributed.workers.hello": ("torch.distributed.checkpoint", "transformers"),
    "smml_lib.course": ("transformers",),
    "smml_lib.distributed.analysis": ("transformers", "tokenizers"),
    "smml_lib.models.loading": ("transformers", "tokenizers"),
}


def test_light_entry_points_leave_heavy_libraries_unimported():
    code = ("import importlib, json, sys\nout = {}\n"
            f"for mod, heavy in {LIGHT_IMPORTS!r}.items():\n"
            "    importlib.import_module(mod)\n"
            "    out[mod] = [h for h in heavy if h in sys.modules]\n"
            "print(json.dumps(out))\n")
    # one interpreter for all, imported in this order: a library flagged first at an entry point came with it
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = {m: h for m, h in json.loads(out.stdout.splitlines()[-1]).items() if h}
    assert not loaded, f"these imports pull in heavy libraries they do not need: {loaded}"
