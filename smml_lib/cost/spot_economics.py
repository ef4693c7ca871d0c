"""Spot economics: how often a job is interrupted, how often to checkpoint, and what spot really costs.

Spot capacity is cheaper but can be reclaimed. Whether it pays depends on the work lost at each
interruption, which the checkpoint interval bounds. The calculators (plain arithmetic, units in the
names, each with a hand-computed test):

- ``mtbf_h_from_monthly_rate``: mean time between interruptions from the Spot Instance Advisor's monthly share.
- ``young_interval_h`` / ``daly_interval_h``: the checkpoint interval that minimises expected wall time
  (Young 1974, Daly 2006), and ``optimal_interval_h`` found numerically from the full model.
- ``expected_wall_time_h``: Daly's model of work, checkpoints, interruptions and restarts.
- ``spot_run``: spot vs on-demand for a job of ``work_h`` hours, in hours and dollars;
  ``checkpoint_interval_sweep`` / ``plot_checkpoint_interval``: the overhead curve around the optimum.

Lab 04-3 drills the mechanics (a real notice, a checkpoint inside the two-minute window, a bitwise resume).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from smml_lib.common import plots
from smml_lib.cost.calculators import HOURS_PER_MONTH


def mtbf_h_from_monthly_rate(interrupted_share_per_month: float, instances: int = 1) -> float:
    """Mean time between interruptions of a job on ``instances`` spot instances.

    A monthly interruption share p (the Spot Instance Advisor's buckets: <5 %, 5-10 %, ...) read as a
    constant hazard λ = -ln(1 - p) / 730 h per instance. Any one interruption stops a synchronous job, so
    the job's rate is instances × λ.
    """
    if not 0 < interrupted_share_per_month < 1:
        raise ValueError("interrupted_share_per_month is a fraction in (0, 1)")
    rate_per_h = -math.log1p(-interrupted_share_per_month) / HOURS_PER_MONTH
    return 1.0 / (rate_per_h * instances)


def young_interval_h(checkpoint_cost_h: float, mtbf_h: float) -> float:
    """Young (1974): the checkpoint interval that minimises lost time, τ* = sqrt(2·δ·M)."""
    return math.sqrt(2.0 * checkpoint_cost_h * mtbf_h)


def daly_interval_h(checkpoint_cost_h: float, mtbf_h: float) -> float:
    """Daly (2006), the higher-order refinement of Young: accurate when δ is not tiny against M."""
    d, m = checkpoint_cost_h, mtbf_h
    if d >= 2 * m:
        return m
    x = d / (2 * m)
    return math.sqrt(2 * d * m) * (1 + math.sqrt(x) / 3 + x / 9) - d


def expected_wall_time_h(work_h: float, interval_h: float, checkpoint_cost_h: float, restart_h: float,
                         mtbf_h: float) -> float:
    """Expected wall time to finish ``work_h`` hours of compute under random (Poisson) interruptions.

    The work runs in segments of τ = ``interval_h`` followed by a checkpoint of δ hours. An interruption
    loses the unfinished segment and costs a restart of R hours (a new instance, reload the checkpoint),
    which can itself be interrupted. For exponential failures with mean M, one segment takes on average
    M·e^(R/M)·(e^((τ+δ)/M) − 1) (Daly 2006), and there are work/τ segments. With M → ∞ this is
    work·(1 + δ/τ): only the checkpoints cost time.
    """
    if min(work_h, interval_h, mtbf_h) <= 0 or min(checkpoint_cost_h, restart_h) < 0:
        raise ValueError("work, interval and MTBF must be positive; checkpoint cost and restart non-negative")
    m = mtbf_h
    per_segment = m * math.exp(restart_h / m) * math.expm1((interval_h + checkpoint_cost_h) / m)
    return work_h / interval_h * per_segment


def optimal_interval_h(checkpoint_cost_h: float, restart_h: float, mtbf_h: float, work_h: float = 1.0) -> float:
    """The τ that minimises ``expected_wall_time_h`` exactly (golden-section search on log τ)."""
    lo, hi = math.log(max(checkpoint_cost_h, 1e-9) * 1e-3), math.log(mtbf_h * 10)
    f = lambda lt: expected_wall_time_h(work_h, math.exp(lt), checkpoint_cost_h, restart_h, mtbf_h)
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    for _ in range(200):
        c, d = b - g * (b - a), a + g * (b - a)
        if f(c) < f(d):
            b = d
        else:
            a = c
    return math.exp((a + b) / 2)


@dataclass
class SpotEstimate:
    work_h: float
    interval_h: float
    on_demand_wall_h: float
    on_demand_usd: float
    spot_wall_h: float
    spot_usd: float
    expected_interruptions: float
    savings_usd: float
    savings_fraction: float

    def row(self) -> dict[str, Any]:
        return asdict(self)


def spot_run(work_h: float, *, on_demand_usd_per_h: float, spot_usd_per_h: float, mtbf_h: float,
             interval_h: float, checkpoint_cost_h: float, restart_h: float, instances: int = 1) -> SpotEstimate:
    """Expected time and cost of a job on spot vs on-demand (both checkpoint every ``interval_h``).

    ``mtbf_h`` is the job's mean time between interruptions (see ``mtbf_h_from_monthly_rate``); every paid
    hour counts, including restarts (a conservative assumption). On-demand is modelled without interruptions.
    """
    od_wall = work_h * (1 + checkpoint_cost_h / interval_h)
    sp_wall = expected_wall_time_h(work_h, interval_h, checkpoint_cost_h, restart_h, mtbf_h)
    od_usd = od_wall * on_demand_usd_per_h * instances
    sp_usd = sp_wall * spot_usd_per_h * instances
    return SpotEstimate(work_h, interval_h, od_wall, od_usd, sp_wall, sp_usd, sp_wall / mtbf_h, od_usd - sp_usd,
                        1 - sp_usd / od_usd)


def checkpoint_interval_sweep(intervals_h: Sequence[float], *, work_h: float, checkpoint_cost_h: float,
                              restart_h: float, mtbf_h: float) -> Any:
    """Expected wall time and overhead for each checkpoint interval (the U-shaped curve Young/Daly minimise)."""
    rows = []
    for tau in intervals_h:
        t = expected_wall_time_h(work_h, tau, checkpoint_cost_h, restart_h, mtbf_h)
        rows.append({"interval_h": tau, "expected_wall_h": t, "overhead_pct": 100 * (t / work_h - 1),
                     "checkpoint_pct": 100 * checkpoint_cost_h / tau})
    return pd.DataFrame(rows)


def plot_checkpoint_interval(checkpoint_cost_h: float, restart_h: float, mtbf_h: float, *,
                             current_h: float | None = None, name: str = "m04_checkpoint_interval",
                             title: str = "") -> Any:
    """The U-curve: expected overhead against the checkpoint interval, with Young's, Daly's and the exact optimum.

    Returns the sweep DataFrame (minutes on the x axis)."""
    young, daly = young_interval_h(checkpoint_cost_h, mtbf_h), daly_interval_h(checkpoint_cost_h, mtbf_h)
    exact = optimal_interval_h(checkpoint_cost_h, restart_h, mtbf_h)
    lo, hi = young / 30, min(young * 30, mtbf_h * 3)
    if current_h:
        lo, hi = min(lo, current_h / 3), max(hi, current_h * 3)
    grid = np.geomspace(lo, hi, 100)
    sweep = checkpoint_interval_sweep(grid, work_h=1.0, checkpoint_cost_h=checkpoint_cost_h, restart_h=restart_h,
                                      mtbf_h=mtbf_h)
    sweep["interval_min"] = sweep["interval_h"] * 60
    sweep["lost_work_pct"] = sweep["overhead_pct"] - sweep["checkpoint_pct"]
    fig, ax = plots.figure(size=(7, 4), title=title or "Expected overhead vs checkpoint interval")
    ax.plot(sweep["interval_min"], sweep["overhead_pct"], lw=2, label="total overhead")
    ax.plot(sweep["interval_min"], sweep["checkpoint_pct"], "--", label="writing checkpoints (δ/τ)")
    ax.plot(sweep["interval_min"], sweep["lost_work_pct"], "--", label="lost work + restarts")
    for label, tau, style in (("Young", young, "k:"), ("Daly", daly, "g:"), ("exact", exact, "r:")):
        ax.axvline(tau * 60, color=style[0], ls=":", label=f"{label}: {tau * 60:.3g} min")
    if current_h:
        ax.axvline(current_h * 60, color="0.5", lw=3, alpha=0.4, label=f"yours: {current_h * 60:.3g} min")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("checkpoint interval τ (minutes)")
    ax.set_ylabel("extra wall time (% of the work)")
    ax.legend(fontsize=8)
    plots.finish(fig, name)
    return sweep
