"""Show things in a notebook when there is one, print them otherwise (scripts, torchrun workers, tests)."""

from __future__ import annotations

from typing import Any


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, papermill), False in a plain Python process."""
    try:
        from IPython import get_ipython  # deferred: only inside Jupyter

        shell = get_ipython()
        return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
    except ImportError:
        return False


def show(text: str, *, html: str | None = None, markdown: str | None = None,
         data: dict[str, Any] | None = None) -> None:
    """Display a rich bundle in a notebook (HTML/Markdown plus custom MIME data); print ``text`` elsewhere."""
    if not in_notebook():
        print(text)
        return
    from IPython.display import display  # deferred: only inside Jupyter

    bundle: dict[str, Any] = {"text/plain": text}
    if html:
        bundle["text/html"] = html
    if markdown:
        bundle["text/markdown"] = markdown
    if data:
        bundle.update(data)
    display(bundle, raw=True)


def format_number(value: Any) -> str:
    """Readable numbers: integers with thousands separators, floats with 4 significant digits."""
    if isinstance(value, bool) or value is None:
        return str(value)
    try:
        import numpy as np  # deferred: optional

        if isinstance(value, (int, np.integer)):
            return f"{int(value):,}"
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if v != v:  # NaN
        return "-"
    if v in (float("inf"), float("-inf")):
        return "∞" if v > 0 else "-∞"
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) >= 1e4:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def show_frame(df: Any, caption: str | None = None, float_format: Any = None) -> None:
    """Display a DataFrame with readable numbers and an optional caption (a plain table outside notebooks).

    ``float_format`` (a format string or callable) overrides the default ``format_number``.
    """
    fmt = float_format or format_number
    if not in_notebook():
        if caption:
            print(caption)
        print(df.to_string(formatters={c: (fmt.format if isinstance(fmt, str) else fmt)
                                       for c in df.select_dtypes("number").columns}))
        return
    from IPython.display import display  # deferred: only inside Jupyter

    styler = df.style.format(fmt, subset=df.select_dtypes("number").columns).hide(axis="index")
    if caption:
        styler = styler.set_caption(caption)
    display(styler)


class QuietFloat(float):
    """A float that does not echo itself as a notebook cell's last value (it was already shown)."""

    def _ipython_display_(self) -> None:
        pass


class QuietInt(int):
    """An int that does not echo itself as a notebook cell's last value (it was already shown)."""

    def _ipython_display_(self) -> None:
        pass


def quiet(value: Any) -> Any:
    """Wrap a number so that ending a cell with it does not print it a second time."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return QuietInt(value)
    if isinstance(value, float):
        return QuietFloat(value)
    return value
