"""Start a lab, record its key figures, and end it with a check that fails when nothing happened.

Every notebook follows the same frame::

    # parameters cell (papermill overrides these literals)
    mode: str = "auto"   # "auto" | "real" | "smoke"

    lab = start_lab("00-3 Running a model", mode)     # resolves mode and device, prints the header
    model_id = lab.model_id("meta-llama/Llama-3.2-1B")  # "tiny" in smoke mode
    ...
    lab.record("ttft_ms", 12.3, "ms")                   # a key figure: shown here and in the run report
    ...
    lab.check({"generated 32 tokens": n == 32, ...})    # the last cell: raises if any check fails

**Modes.** ``real`` runs the real models on GPUs; ``smoke`` runs the same cells on a CPU with the
offline tiny Llama and small sizes; ``auto`` picks real when torch sees a CUDA GPU, smoke otherwise.
"""

from __future__ import annotations

import html
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from smml_lib import __version__
from smml_lib.common.device import device_name
from smml_lib.common.display import quiet, show
from smml_lib.perf.results import save_result

MODES = ("auto", "real", "smoke")
KEY_FIGURE_MIME = "application/vnd.smml.keyfigure+json"
CHECK_MIME = "application/vnd.smml.check+json"


class LabCheckError(AssertionError):
    """The final check of a lab failed: the lab ran but did not produce what it should have."""


def resolve_mode(mode: str = "auto") -> str:
    """``auto`` -> ``real`` when torch sees a CUDA GPU, else ``smoke``."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {', '.join(MODES)}")
    if mode == "auto":
        return "real" if torch.cuda.is_available() else "smoke"
    return mode


@dataclass
class Lab:
    """A running lab: its mode, device, and the key figures recorded so far."""

    name: str
    mode: str
    device: Any
    started: float = field(default_factory=time.perf_counter)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def smoke(self) -> bool:
        return self.mode == "smoke"

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    def pick(self, *, smoke: Any, real: Any) -> Any:
        """Choose a size by mode, e.g. ``lab.pick(smoke=64, real=4096)``."""
        return smoke if self.smoke else real

    def model_id(self, real_model: str) -> str:
        """``"tiny"`` in smoke mode, else ``real_model`` (a hub id or a local folder)."""
        return "tiny" if self.smoke else real_model

    def record(self, name: str, value: Any, unit: str = "", note: str = "") -> Any:
        """Record a key figure: shown here, collected into the main job's report. Returns ``value``.

        The returned number does not echo again when it ends a cell (it was just shown).
        """
        fig = {"name": name, "value": value, "unit": unit, "note": note, "lab": self.name, "mode": self.mode}
        self.figures[name] = fig
        shown = f"{value:,.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
        text = f"{name} = {shown} {unit}".rstrip() + (f"  ({note})" if note else "")
        show(text, html=f"<b>{html.escape(name)}</b> = {html.escape(shown)} {html.escape(unit)}"
             + (f" <i>({html.escape(note)})</i>" if note else ""),
             data={KEY_FIGURE_MIME: {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                     for k, v in fig.items()}})
        return quiet(value)

    def save(self, name: str, data: Any, **meta: Any) -> Any:
        """Save a result table for later labs (see ``smml_lib.perf.results``). Returns the path."""
        return save_result(name, data, mode=self.mode, lab=self.name, **meta)

    def check(self, checks: dict[str, bool], needs_gpu: set[str] | frozenset[str] = frozenset()) -> None:
        """The last cell of every lab: each named condition must hold, else ``LabCheckError``.

        ``needs_gpu`` names the checks that only hold on a GPU's physics (a fraction of its bandwidth, a
        speedup that tensor cores or a compiled kernel give). In real mode without a GPU (a rehearsal of
        real mode on a CPU) they are listed as "needs a GPU" and left unjudged: neither passed nor failed.
        In smoke mode and on a GPU they are judged like every other check.
        """
        if not checks:
            raise LabCheckError("a lab check needs at least one condition")
        unknown = set(needs_gpu) - set(checks)
        if unknown:
            raise ValueError(f"needs_gpu names checks that are not in the check: {sorted(unknown)}")
        unjudged = [name for name in checks if name in needs_gpu and self.mode == "real" and not self.gpu]
        judged = {name: ok for name, ok in checks.items() if name not in unjudged}
        failed = [name for name, ok in judged.items() if not bool(ok)]
        lines = [("- " if name in unjudged else "✗ " if name in failed else "✓ ") + name
                 + ("  (needs a GPU: not judged here)" if name in unjudged else "") for name in checks]
        elapsed = time.perf_counter() - self.started
        summary = (f"{self.name}: {len(judged) - len(failed)}/{len(judged)} checks passed in {elapsed:.1f} s "
                   f"({self.mode} mode)" + (f"; {len(unjudged)} need a GPU" if unjudged else ""))
        show("\n".join([summary, *lines]),
             html=f"<b>{html.escape(summary)}</b><br>" + "<br>".join(html.escape(x) for x in lines),
             data={CHECK_MIME: {"lab": self.name, "passed": len(judged) - len(failed), "total": len(judged),
                                "failed": failed, "needs_gpu": unjudged, "elapsed_s": elapsed}})
        if failed:
            raise LabCheckError(f"{self.name}: {len(failed)} check(s) failed: " + "; ".join(failed))


def _quiet_libraries() -> None:
    """Keep lab output readable: transformers' info chatter and known-harmless warnings off."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging  # deferred: optional

        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")


def start_lab(name: str, mode: str = "auto", *, seed: int = 0) -> Lab:
    """Begin a lab: resolve the mode and device, seed the random generators, print a header.

    Args:
        name: the lab's title, e.g. ``"00-3 Running a model"``.
        mode: ``"auto"`` (real on a GPU machine, smoke otherwise), ``"real"`` or ``"smoke"``.
        seed: seed for torch's random generators, so reruns give the same random inputs.
    """
    resolved = resolve_mode(mode)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    _quiet_libraries()
    why = {"auto": "auto: " + ("a CUDA GPU is visible" if resolved == "real" else "no CUDA GPU, so smoke mode"),
           "real": "real: set by the parameters cell", "smoke": "smoke: set by the parameters cell"}[mode]
    lab = Lab(name, resolved, device)
    rows = [("mode", f"{resolved} ({why})"), ("device", f"{device} - {device_name(device)}"),
            ("torch", torch.__version__), ("smml_lib", __version__)]
    if resolved == "real" and device.type == "cpu":
        rows.append(("note", "real mode without a GPU: real model sizes on a CPU will be very slow"))
    text = "\n".join(f"{k:>9}: {v}" for k, v in rows)
    show(f"{name}\n{text}", html=f"<b>{html.escape(name)}</b><table>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>")
    return lab
