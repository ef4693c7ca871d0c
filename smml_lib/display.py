"""Show things in a notebook when there is one, print them otherwise (scripts, torchrun workers, tests)."""

from __future__ import annotations

from typing import Any


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, papermill), False in a plain Python process."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
    except ImportError:
        return False


def show(text: str, *, html: str | None = None, markdown: str | None = None, data: dict[str, Any] | None = None) -> None:
    """Display a rich bundle in a notebook (HTML/Markdown plus custom MIME data); print ``text`` elsewhere."""
    if not in_notebook():
        print(text)
        return
    from IPython.display import display

    bundle: dict[str, Any] = {"text/plain": text}
    if html:
        bundle["text/html"] = html
    if markdown:
        bundle["text/markdown"] = markdown
    if data:
        bundle.update(data)
    display(bundle, raw=True)


def show_frame(df: Any, caption: str | None = None, float_format: str = "{:,.4g}") -> None:
    """Display a DataFrame with readable numbers (4 significant digits) and an optional caption."""
    if not in_notebook():
        if caption:
            print(caption)
        print(df.to_string())
        return
    from IPython.display import display

    styler = df.style.format(float_format, subset=df.select_dtypes("number").columns).hide(axis="index")
    if caption:
        styler = styler.set_caption(caption)
    display(styler)
