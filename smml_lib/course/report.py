"""The browsable report of a lab run: ``index.html`` plus one HTML page per executed notebook.

The index is the instructor's pre-flight evidence: the machine (the ``smml doctor`` table), then
every lab with its status, duration, key figures and check result, and for a failed lab the cell
and the error. Each lab links to its executed notebook rendered as HTML (and the .ipynb itself).
"""

from __future__ import annotations

import datetime as _dt
import html
from pathlib import Path
from typing import Any

from smml_lib.course.doctor import run_doctor

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;width:100%;margin:1rem 0;font-size:.92rem}
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4} .passed{color:#11772b;font-weight:600} .failed{color:#b00020;font-weight:600}
.ok{color:#11772b} .warn{color:#a06000} .missing{color:#b00020}
.err{font-family:monospace;font-size:.85rem;color:#b00020}
.fig{white-space:nowrap} code{background:#f4f4f4;padding:0 .2rem}
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _doctor_table() -> str:
    try:
        df = run_doctor()
    except Exception as exc:  # the report must still be written
        return f"<p class='err'>smml doctor failed: {html.escape(str(exc))}</p>"
    rows = "".join(
        f"<tr><td>{html.escape(str(r.check))}</td><td>{html.escape(str(r.value))}</td>"
        f"<td class='{html.escape(str(r.verdict))}'>{html.escape(str(r.verdict))}</td>"
        f"<td>{html.escape(str(r.fix))}</td></tr>"
        for r in df.itertuples())
    return f"<table><tr><th>check</th><th>value</th><th>verdict</th><th>fix</th></tr>{rows}</table>"


def notebook_to_html(ipynb: Path, dest: Path) -> Path | None:
    """Render an executed notebook to a standalone HTML page (None if nbconvert is unavailable)."""
    try:
        import nbformat  # deferred: optional extra [notebooks]
        from nbconvert import HTMLExporter  # deferred: optional extra [notebooks]

        body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(str(ipynb), as_version=4))
    except Exception:
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(body)
    return dest


def write_report(runs: list[Any], run_dir: Path, parameters: dict[str, Any], *, html_notebooks: bool = True) -> Path:
    """Write ``run_dir/index.html`` for a list of ``LabRun``; returns its path."""
    rows = []
    for r in runs:
        ipynb = Path(r.output)
        links = []
        if html_notebooks and ipynb.exists():
            page = notebook_to_html(ipynb, ipynb.with_suffix(".html"))
            if page:
                links.append(f"<a href='{page.relative_to(run_dir).as_posix()}'>html</a>")
        if ipynb.exists():
            links.append(f"<a href='{ipynb.relative_to(run_dir).as_posix()}'>ipynb</a>")
        figs = "<br>".join(f"<span class='fig'>{html.escape(f['name'])} = <b>{html.escape(_fmt(f['value']))}</b> "
                           f"{html.escape(str(f.get('unit', '')))}</span>" for f in r.key_figures)
        check = f"{r.checks.get('passed')}/{r.checks.get('total')}" if r.checks else "-"
        if r.checks and r.checks.get("needs_gpu"):  # real mode on a CPU: listed, not judged
            check += "<br><small>needs a GPU: " + "; ".join(html.escape(n) for n in r.checks["needs_gpu"]) + "</small>"
        src = f" <code>{html.escape(r.error_source[:100])}</code>" if getattr(r, "error_source", "") else ""
        err = (f"<div class='err'>cell {r.error_cell}{src}: {html.escape(r.error[:600])}</div>" if r.error else "")
        rows.append(f"<tr><td>{html.escape(r.notebook)}<br><small>{html.escape(r.title)}</small>{err}</td>"
                    f"<td class='{r.status}'>{r.status}</td><td>{r.duration_s:.1f} s</td><td>{check}</td>"
                    f"<td>{figs}</td><td>{' · '.join(links)}</td></tr>")
    passed = sum(r.status == "passed" for r in runs)
    total_s = sum(r.duration_s for r in runs)
    params = ", ".join(f"{k}={v!r}" for k, v in parameters.items()) or "embedded defaults (mode='auto')"
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>SMML Lab run report</title>
<style>{CSS}</style></head><body>
<h1>SMML Lab run report</h1>
<p class='sub'>{_dt.datetime.now().isoformat(timespec='seconds')} · parameters: <code>{html.escape(params)}</code></p>
<h2>Result: <span class='{'passed' if passed == len(runs) else 'failed'}'>{passed}/{len(runs)} labs passed</span>
in {total_s:.0f} s</h2>
<table><tr><th>lab</th><th>status</th><th>duration</th><th>checks</th><th>key figures</th>
<th>executed notebook</th></tr>
{''.join(rows)}</table>
<h2>Machine (smml doctor)</h2>{_doctor_table()}
<p class='sub'>Figures and results of this run: <code>outputs/</code> in this folder.
Machine-readable: <code>summary.json</code>.</p>
</body></html>"""
    index = run_dir / "index.html"
    index.write_text(page)
    return index
