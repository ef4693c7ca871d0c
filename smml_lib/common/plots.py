"""The one plotting helper: consistent figures, captioned with where they were measured, saved as PNG.

Every lab figure goes ``fig, ax = figure(...)`` -> draw -> ``finish(fig, "name")``. ``finish`` adds
a caption (device and date by default), saves ``<outputs>/figures/<name>.png`` and shows the figure
once in the notebook. ``line`` and ``bars`` cover the common cases from a DataFrame in one call.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Sequence

import matplotlib
from matplotlib.ticker import NullFormatter, ScalarFormatter

from smml_lib.common.device import device_name
from smml_lib.common.display import in_notebook
from smml_lib.common.paths import output_dir

if not in_notebook():
    matplotlib.use("Agg")  # scripts, tests and torchrun workers have no screen

import matplotlib.pyplot as plt

STYLE = {"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False, "font.size": 10, "legend.frameon": False}


def figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] | None = None,
           title: str | None = None) -> tuple[Any, Any]:
    """A new figure in the course style. Returns ``(fig, ax)`` (``ax`` is an array when there are several)."""
    plt.rcParams.update(STYLE)
    size = size or (6.5 * ncols, 4.0 * nrows)
    fig, ax = plt.subplots(nrows, ncols, figsize=size, squeeze=True)
    if title:
        fig.suptitle(title, fontweight="bold")
    return fig, ax


def _default_caption() -> str:
    return f"{device_name()} · {_dt.date.today().isoformat()}"


def finish(fig: Any, name: str | None = None, *, caption: str | None = None, show: bool = True) -> Path | None:
    """Caption, save (when ``name`` is given) and show a figure, then close it. Returns the PNG path."""
    fig.text(0.99, 0.005, caption if caption is not None else _default_caption(), ha="right", va="bottom",
             fontsize=7, color="0.45")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = None
    if name:
        path = output_dir("figures") / f"{name}.png"
        fig.savefig(path, dpi=120)
    if show and in_notebook():
        from IPython.display import display  # deferred: only inside Jupyter

        display(fig)
    plt.close(fig)
    return path


def _series(ax: Any, df: Any, x: str, y: str, hue: str | None, marker: str, label: str | None) -> None:
    if hue is None:
        ax.plot(df[x], df[y], marker=marker, label=label or y)
        return
    for key, part in df.groupby(hue, sort=False):
        ax.plot(part[x], part[y], marker=marker, label=f"{hue}={key}" if not isinstance(key, str) else key)


def log_axis_with_data_ticks(ax: Any, values: Any, axis: str = "x") -> None:
    """Log scale whose tick labels are the plotted values themselves (16, 64, 256), not 2x10^1."""
    ticks = sorted({float(v) for v in values if v and v > 0})
    set_scale, set_ticks, ax_obj = ((ax.set_xscale, ax.set_xticks, ax.xaxis) if axis == "x"
                                    else (ax.set_yscale, ax.set_yticks, ax.yaxis))
    set_scale("log")
    if 0 < len(ticks) <= 12:
        set_ticks(ticks)
        fmt = ScalarFormatter()
        fmt.set_scientific(False)
        ax_obj.set_major_formatter(fmt)
        ax_obj.set_minor_formatter(NullFormatter())


def line(df: Any, x: str, y: str | Sequence[str], *, hue: str | None = None, title: str | None = None,
         xlabel: str | None = None, ylabel: str | None = None, logx: bool = False, logy: bool = False,
         name: str | None = None, ax: Any = None, marker: str = "o", caption: str | None = None) -> Any:
    """Line plot of ``y`` against ``x`` from a DataFrame, one line per ``hue`` value (or per column in ``y``)."""
    own = ax is None
    fig, ax = figure(title=title) if own else (ax.figure, ax)
    for col in [y] if isinstance(y, str) else list(y):
        _series(ax, df, x, col, hue, marker, None if isinstance(y, str) else col)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or (y if isinstance(y, str) else ""))
    if logx:
        log_axis_with_data_ticks(ax, df[x])
    if logy:
        ax.set_yscale("log")
    if hue is not None or not isinstance(y, str):
        ax.legend()
    if own:
        finish(fig, name, caption=caption)
    return ax


def bars(df: Any, x: str, y: str, *, title: str | None = None, ylabel: str | None = None, name: str | None = None,
         ax: Any = None, annotate: str = "{:.3g}", color: Any = None, caption: str | None = None) -> Any:
    """Bar chart of ``y`` per ``x`` with each bar's value written on it."""
    own = ax is None
    fig, ax = figure(title=title) if own else (ax.figure, ax)
    rects = ax.bar([str(v) for v in df[x]], df[y], color=color)
    for r, v in zip(rects, df[y]):
        ax.annotate(annotate.format(v), (r.get_x() + r.get_width() / 2, r.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.set_ylabel(ylabel or y)
    ax.tick_params(axis="x", labelrotation=20)
    if own:
        finish(fig, name, caption=caption)
    return ax
