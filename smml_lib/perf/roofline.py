"""The roofline model: what limits a piece of work, the math units or the memory system?

A kernel with arithmetic intensity I (FLOP per byte moved) on a device with peak compute P (FLOP/s)
and memory bandwidth B (byte/s) can reach at most::

    attainable(I) = min(P, B x I)

On a log-log plot that is a slanted line (the memory roof) meeting a flat one (the compute roof) at
the **ridge point** I* = P / B. Work left of the ridge is *memory-bound* (faster memory helps, more
FLOP/s does not); right of it, *compute-bound*. An L4 in bf16 has I* = 121e12 / 300e9 ≈ 403 FLOP/byte.

For a linear layer with weight K x N and M tokens in the batch, I ≈ 2·M / bytes-per-element while
M << N, K: decode at batch 1 sits far left of the ridge. The **critical batch size** is the M where
the layer reaches the ridge: from there on, adding sequences to the batch costs time.

Rooflines come from the datasheet (``hardware.lookup_spec``, dense peaks) and from this device's
measured ceilings (``ceilings.measure_ceilings``); on a CPU or an unlisted GPU only the measured one exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from smml_lib.common import plots
from smml_lib.common.device import bytes_per_element, dtype_name
from smml_lib.perf.gemm import out_dtype_of
from smml_lib.perf.hardware import SPECS, lookup_spec


def ridge_point(peak_tflops: float, bandwidth_gbs: float) -> float:
    """FLOP/byte where the compute roof (TFLOP/s) meets the memory roof (GB/s)."""
    return peak_tflops * 1e12 / (bandwidth_gbs * 1e9)


def attainable_tflops(intensity: Any, peak_tflops: float, bandwidth_gbs: float) -> Any:
    """The roofline: min(peak, bandwidth x intensity), in TFLOP/s (works on scalars and arrays)."""
    return np.minimum(peak_tflops, bandwidth_gbs * 1e9 * np.asarray(intensity, dtype=float) / 1e12)


def critical_batch_size(ridge: float, n: int, k: int, dtype: Any = "bf16") -> float:
    """Smallest M at which an (M x K) @ (K x N) GEMM reaches the ridge intensity (``inf`` if it never does).

    Solves 2MNK = ridge x (b·MK + b·KN + b_out·MN) for M. For N, K >> M this is about ridge x b / 2:
    the well-known "about 400 tokens" for an L4 in bf16 (b = 2 bytes).
    """
    b, b_out = bytes_per_element(dtype), bytes_per_element(out_dtype_of(dtype))
    denom = 2.0 * n * k - ridge * (b * k + b_out * n)
    return ridge * b * k * n / denom if denom > 0 else float("inf")


@dataclass(frozen=True)
class Roof:
    """One roofline: a compute ceiling and a memory ceiling, from the datasheet or measured here."""

    label: str
    peak_tflops: float
    bandwidth_gbs: float
    kind: str  # "datasheet" or "measured"
    dtype: str

    @property
    def ridge_point(self) -> float:
        return ridge_point(self.peak_tflops, self.bandwidth_gbs)

    def attainable_tflops(self, intensity: Any) -> Any:
        return attainable_tflops(intensity, self.peak_tflops, self.bandwidth_gbs)

    def bound(self, intensity: float) -> str:
        return "compute-bound" if intensity >= self.ridge_point else "memory-bound"

    def row(self) -> dict[str, Any]:
        return {"roof": self.label, "kind": self.kind, "dtype": self.dtype, "peak_tflops": self.peak_tflops,
                "bandwidth_gbs": self.bandwidth_gbs, "ridge_flop_per_byte": self.ridge_point}


def datasheet_roof(device_name: str, dtype: str = "bf16") -> Roof | None:
    """The datasheet roofline of a device (dense peak), or ``None`` when there is no entry or no such dtype."""
    spec = lookup_spec(device_name).spec
    peak = spec.peak_tflops(dtype_name(dtype)) if spec else None
    if not peak:
        return None
    return Roof(f"{spec.name} datasheet {dtype_name(dtype)}", peak, spec.bandwidth_gbs, "datasheet", dtype_name(dtype))


def datasheet_ridges(dtype: str = "bf16") -> pd.DataFrame:
    """Every accelerator in the datasheet table with its dense ``dtype`` peak, bandwidth and ridge point."""
    rows = [{"name": spec.name, f"{dtype}_tflops": spec.peak_tflops(dtype), "bandwidth_gbs": spec.bandwidth_gbs,
             "ridge_flop_per_byte": ridge_point(spec.peak_tflops(dtype), spec.bandwidth_gbs)}
            for spec in SPECS if spec.peak_tflops(dtype)]
    return pd.DataFrame(rows)


def measured_roof(ceilings: Any) -> Roof:
    """The roofline measured on this device (``ceilings.measure_ceilings``: best matmul, large copy)."""
    return Roof(f"measured {ceilings.matmul_dtype}", ceilings.matmul_tflops, ceilings.copy_gbps, "measured",
                ceilings.matmul_dtype)


def raise_roof(roof: Roof, tflops: Any) -> Roof:
    """The measured roof lifted to the best TFLOP/s actually observed, if any measurement beat it.

    A measured roof is "the best this device has been seen to do". When a later GEMM beats the ceiling
    measured first (a noisy first measurement, a better shape), the roof moves up; the datasheet roof never does.
    """
    best = float(np.nanmax(np.asarray(tflops, dtype=float))) if len(tflops) else float("nan")
    if roof.kind != "measured" or not best > roof.peak_tflops:
        return roof
    return Roof(f"{roof.label} (best seen)", best, roof.bandwidth_gbs, roof.kind, roof.dtype)


def roofs(ceilings: Any = None, device_name: str | None = None, dtypes: list[str] | None = None) -> list[Roof]:
    """Measured roof (if ``ceilings`` given) plus datasheet roofs for ``dtypes`` where the device has an entry."""
    out = [measured_roof(ceilings)] if ceilings is not None else []
    name = device_name or (ceilings.device_name if ceilings is not None else "")
    for d in dtypes or [ceilings.matmul_dtype if ceilings is not None else "bf16"]:
        roof = datasheet_roof(name, d)
        if roof is not None:
            out.append(roof)
    return out


def roofs_frame(roof_list: list[Roof]) -> "Any":
    return pd.DataFrame([r.row() for r in roof_list])


def classify(df: Any, roof: Roof, *, intensity: str = "intensity", tflops: str = "tflops") -> "Any":
    """Add the roof's attainable TFLOP/s, the bound (memory/compute) and the % of attainable reached."""
    out = df.copy()
    out["attainable_tflops"] = roof.attainable_tflops(out[intensity])
    out["bound"] = [roof.bound(i) for i in out[intensity]]
    if tflops in out:
        out["pct_of_attainable"] = 100 * out[tflops] / out["attainable_tflops"]
    return out


_ROOF_STYLE = {"datasheet": dict(linestyle="--", linewidth=1.6), "measured": dict(linestyle="-", linewidth=2.0)}


def plot_roofline(points: Any = None, roof_list: list[Roof] = (), *, x: str = "intensity", y: str = "tflops",
                  label: str = "label", hue: str | None = None, title: str = "Roofline", name: str | None = None,
                  annotate: bool = True, ax: Any = None, caption: str | None = None) -> Any:
    """Log-log roofline: each roof as a line with its ridge marked, measured points labelled by shape.

    Args:
        points: DataFrame with an intensity column ``x`` (FLOP/byte) and a TFLOP/s column ``y``.
        roof_list: ``Roof`` objects (datasheet dashed, measured solid).
        hue: column that colours the points (e.g. dtype); ``label`` names each point.
    """
    own = ax is None
    fig, ax = plots.figure(title=title, size=(7.5, 5)) if own else (ax.figure, ax)
    xs = [1e-1, 1e4]
    if points is not None and len(points):
        xs = [min(xs[0], float(points[x].min()) / 2), max(xs[1], float(points[x].max()) * 2)]
    for roof in roof_list:
        xs = [min(xs[0], roof.ridge_point / 100), max(xs[1], roof.ridge_point * 20)]
    grid = np.logspace(np.log10(xs[0]), np.log10(xs[1]), 256)
    for roof in roof_list:
        line, = ax.plot(grid, roof.attainable_tflops(grid), label=f"{roof.label}: {roof.peak_tflops:.3g} TFLOP/s, "
                        f"{roof.bandwidth_gbs:.0f} GB/s", **_ROOF_STYLE.get(roof.kind, {}))
        ax.axvline(roof.ridge_point, color=line.get_color(), alpha=0.3, linewidth=0.8)
        ax.annotate(f"ridge {roof.ridge_point:.3g}", (roof.ridge_point, roof.peak_tflops), textcoords="offset points",
                    xytext=(4, 4), fontsize=7, color=line.get_color())
    if points is not None and len(points):
        groups = points.groupby(hue, sort=False) if hue else [(None, points)]
        for key, part in groups:
            ax.scatter(part[x], part[y], s=28, zorder=3, label=str(key) if key is not None else "measured")
            if annotate and label in part:
                for j, (xi, yi, text) in enumerate(zip(part[x], part[y], part[label])):  # alternate below/above
                    ax.annotate(str(text), (xi, yi), textcoords="offset points", xytext=(3, -9 if j % 2 == 0 else 5),
                                fontsize=6.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("TFLOP/s")
    ax.legend(fontsize=7, loc="lower right")
    if own:
        plots.finish(fig, name, caption=caption)
    return ax
