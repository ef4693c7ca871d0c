"""Calculators that turn measured throughput and an instance price into dollars.

Every function here is plain arithmetic with units in the names, so each has a hand-computed test:

- ``cost_per_million_tokens``: inference, from measured tokens/s and $/hour.
- ``training_run_cost``: a training run from C = 6·N·D FLOPs, GPU count, datasheet peak and measured MFU.
- spot economics (interruptions, checkpoint intervals, spot vs on-demand) live in ``smml_lib.cost.spot_economics``.
- ``purchase_options``: on-demand, spot, Savings Plans / RIs, ODCRs and Capacity Blocks side by side, with the
  break-even utilization of each commitment. Discounts that no AWS source in this course gives are
  ``Assumption`` objects: the tables print them as assumptions, never as AWS facts.
- ``idle_waste``: right-sizing from telemetry, the dollars spent on GPUs that sat idle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import pandas as pd

from smml_lib.common import plots
from smml_lib.models.scaling import training_flops, training_time_s
from smml_lib.perf.hardware import SPECS
from smml_lib.perf.results import load_result

HOURS_PER_MONTH = 730.0  # 8760 h / 12: the monthly hours AWS price pages and calculators use
SECONDS_PER_HOUR = 3600.0


# ------------------------------------------------------------------------------------------- inference
def cost_per_million_tokens(usd_per_hour: float, tokens_per_s: float, *, utilization: float = 1.0) -> float:
    """Dollars per 1M generated tokens: an hour's price divided by the tokens produced in that hour.

    ``utilization`` is the share of paid time the server is actually generating at ``tokens_per_s``
    (a server busy half the time pays twice as much per token).
    """
    if tokens_per_s <= 0 or not 0 < utilization <= 1:
        raise ValueError(f"need tokens_per_s > 0 and 0 < utilization <= 1, got {tokens_per_s}, {utilization}")
    return usd_per_hour / (tokens_per_s * SECONDS_PER_HOUR * utilization) * 1e6


# -------------------------------------------------------------------------------------------- training
@dataclass
class TrainingRunCost:
    params: float
    tokens: float
    flops: float
    gpus: int
    peak_tflops_per_gpu: float
    mfu: float
    wall_h: float
    gpu_hours: float
    instances: float
    instance_hours: float
    usd: float

    def row(self) -> dict[str, Any]:
        return asdict(self)


def training_run_cost(params: float, tokens: float, *, gpus: int, peak_tflops_per_gpu: float, mfu: float,
                      usd_per_instance_hour: float, gpus_per_instance: int) -> TrainingRunCost:
    """Wall time and cost of training ``params`` parameters on ``tokens`` tokens.

    wall time = 6·N·D / (gpus × peak FLOP/s × MFU); cost = instances × wall hours × $/instance-hour.
    MFU (model FLOPs utilization) is the share of the datasheet's dense peak your training step achieves:
    measure it (Module 02), do not guess it.
    """
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu is a fraction of peak in (0, 1], got {mfu}")
    flops = training_flops(params, tokens)
    wall_s = training_time_s(flops, gpus, peak_tflops_per_gpu, mfu)
    wall_h = wall_s / SECONDS_PER_HOUR
    instances = gpus / gpus_per_instance
    return TrainingRunCost(params, tokens, flops, gpus, peak_tflops_per_gpu, mfu, wall_h, wall_h * gpus,
                           instances, wall_h * instances, wall_h * instances * usd_per_instance_hour)


def training_cost_from_throughput(tokens: float, tokens_per_s: float, *, usd_per_instance_hour: float,
                                  instances: float = 1) -> dict[str, float]:
    """Wall time and cost when you measured the job's tokens/s directly (no MFU needed)."""
    wall_h = tokens / tokens_per_s / SECONDS_PER_HOUR
    return {"wall_h": wall_h, "instance_hours": wall_h * instances, "usd": wall_h * instances * usd_per_instance_hour}


# ------------------------------------------------------------------------------------- purchase options
@dataclass(frozen=True)
class Assumption:
    """A number no AWS source in this course gives: shown as an assumption, meant to be replaced by your quote."""

    value: float
    note: str

    def __float__(self) -> float:
        return float(self.value)


@dataclass
class CommitmentTerms:
    """Discounts against on-demand for commitments; replace the assumptions with your own AWS quote."""

    savings_plan_1yr_discount: Assumption = field(default_factory=lambda: Assumption(
        0.30, "ASSUMPTION for illustration (the course's sources do not give it): take yours from the AWS Pricing "
              "Calculator or savingsplans.describe_savings_plans_offering_rates"))
    savings_plan_3yr_discount: Assumption = field(default_factory=lambda: Assumption(
        0.50, "ASSUMPTION for illustration (the course's sources do not give it): take yours from the AWS Pricing "
              "Calculator or savingsplans.describe_savings_plans_offering_rates"))


def break_even_utilization(committed_usd_per_h: float, on_demand_usd_per_h: float) -> float:
    """Share of committed hours you must use for a commitment to beat paying on-demand for those hours.

    You pay ``committed`` for every hour of the term; on-demand you pay ``on_demand`` only for the hours you
    use. They cost the same when utilization u satisfies u·on_demand = committed.
    """
    return committed_usd_per_h / on_demand_usd_per_h


def purchase_options(on_demand_usd_per_h: float, *, spot_usd_per_h: float | None = None,
                     spot_overhead: float = 1.0, capacity_block_usd_per_h: float | None = None,
                     terms: CommitmentTerms | None = None, price_basis: str = "price table") -> Any:
    """The purchase options for one instance type side by side (per instance-hour).

    ``spot_overhead`` = expected wall time / work (from ``spot_economics.spot_run``): spot's price per *useful* hour is
    spot price × overhead. Break-even utilization is given for the options that bill committed hours.
    """
    terms = terms or CommitmentTerms()
    od = on_demand_usd_per_h
    rows = [("On-Demand", od, "hours used", float("nan"), "no", price_basis)]
    if spot_usd_per_h is not None:
        why = (f"; x{spot_overhead:.3f} for checkpoints and lost work (spot model)" if spot_overhead != 1
               else "; interruption overhead not counted here")
        rows.append(("Spot (per useful hour)", spot_usd_per_h * spot_overhead, "hours used; can be interrupted",
                     float("nan"), "no (2-min notice)", price_basis + why))
    for label, a in (("Savings Plan / RI, 1 year", terms.savings_plan_1yr_discount),
                     ("Savings Plan / RI, 3 years", terms.savings_plan_3yr_discount)):
        rate = od * (1 - float(a))
        rows.append((label, rate, "every hour of the term", break_even_utilization(rate, od), "no (a discount only)",
                     f"{a.note} (discount {float(a):.0%})"))
    rows.append(("On-Demand Capacity Reservation", od, "every reserved hour", 1.0, "yes, in one AZ",
                 "billed at on-demand rates: buys assured capacity, never a lower price"))
    if capacity_block_usd_per_h is not None:
        rows.append(("Capacity Block for ML", capacity_block_usd_per_h, "the whole block, upfront",
                     break_even_utilization(capacity_block_usd_per_h, od), "yes, for the block (1-182 days)",
                     "Capacity Blocks price list (snapshot before 2025; older than the on-demand price)"))
    df = pd.DataFrame(rows, columns=["option", "usd_per_hour", "pays_for", "break_even_utilization",
                                     "capacity_assured", "basis"])
    df["vs_on_demand"] = df["usd_per_hour"] / od - 1
    return df


def monthly_cost_vs_usage(options: Any, used_h_per_month: Sequence[float]) -> Any:
    """Monthly cost of each option as a function of the hours you actually use (for the break-even chart)."""
    rows = []
    for _, o in options.iterrows():
        committed = o["pays_for"].startswith("every")
        if o["pays_for"].startswith("the whole block"):
            continue  # a block is bought per job, not per month
        for h in used_h_per_month:
            usd = o["usd_per_hour"] * (HOURS_PER_MONTH if committed else h)
            rows.append({"option": o["option"], "used_h_per_month": h, "usd_per_month": usd})
    return pd.DataFrame(rows)


def plot_break_even(options: Any, name: str = "m04_break_even", title: str = "") -> None:
    """Monthly cost against hours used per month: flat lines (commitments) cross the on-demand ramp at break-even."""
    hours = list(range(0, int(HOURS_PER_MONTH) + 1, 10))
    curve = monthly_cost_vs_usage(options, hours)
    fig, ax = plots.figure(size=(7, 4), title=title or "Monthly cost vs hours used")
    plots.line(curve, "used_h_per_month", "usd_per_month", hue="option", ax=ax, marker="")
    od = options.set_index("option").loc["On-Demand", "usd_per_hour"]
    for _, o in options.dropna(subset=["break_even_utilization"]).iterrows():
        if o["pays_for"].startswith("every") and o["break_even_utilization"] < 1:
            h = o["break_even_utilization"] * HOURS_PER_MONTH
            ax.plot([h], [h * od], "ko", ms=4)
            ax.annotate(f"{h:.0f} h", (h, h * od), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xlabel("hours used per month (730 = always on)")
    ax.set_ylabel("USD per month, one instance")
    plots.finish(fig, name)


# -------------------------------------------------------------------------------------------- right-size
# smml_lib.perf.telemetry: "util_gpu_pct" per GPU with NVML; "cpu_percent" (100 = one core busy) on the CPU fallback.
UTIL_COLUMNS = ("util_gpu_pct", "gpu_util_pct", "utilization_pct", "cpu_percent")


def idle_waste(telemetry: Any, usd_per_hour: float, *, util_col: str | None = None, device_col: str | None = None,
               idle_below_pct: float = 5.0, devices_per_instance: int = 1) -> Any:
    """Dollars paid for idle accelerators, per device, from a telemetry DataFrame.

    A sample counts as idle when utilization < ``idle_below_pct``. For each device: idle share of the samples,
    mean utilization, and per paid hour the idle dollars (share × price per device) and the unused-capacity
    dollars ((1 − mean util) × price per device, an upper bound: busy is not the same as efficient).
    """
    col = util_col or next((c for c in UTIL_COLUMNS if c in telemetry.columns), None)
    if col is None:
        raise KeyError(f"no utilization column among {UTIL_COLUMNS}; pass util_col= "
                       f"(columns: {list(telemetry.columns)})")
    dev = device_col or next((c for c in ("gpu", "device", "index") if c in telemetry.columns), None)
    if dev and telemetry[dev].isna().all():
        dev = None  # the CPU backend has gpu=None: one device, the process
    groups = telemetry.groupby(dev) if dev else [("all", telemetry)]
    per_device_usd_h = usd_per_hour / devices_per_instance
    rows = []
    for key, part in groups:
        util = part[col].astype(float)
        idle = float((util < idle_below_pct).mean())
        mean = float(util.mean())
        rows.append({"device": key, "samples": len(util), "mean_util_pct": mean, "idle_share": idle,
                     "idle_usd_per_h": idle * per_device_usd_h,
                     "unused_usd_per_h": max(0.0, 1 - mean / 100) * per_device_usd_h,
                     "idle_usd_per_month": idle * per_device_usd_h * HOURS_PER_MONTH})
    return pd.DataFrame(rows)


def per_token_costs(throughput: Any, tokens_col: str, *, usd_per_instance_hour: float, gpus_per_instance: int,
                    gpus_used: int = 1) -> Any:
    """Add dollars per 1M tokens to a throughput table (one row per measurement).

    Two readings of the same measurement: ``usd_per_1m_one_replica`` rents the whole instance for one copy of
    the model on ``gpus_used`` GPUs (the other GPUs idle), ``usd_per_1m_instance_full`` fills the instance with
    ``gpus_per_instance / gpus_used`` independent copies (data-parallel serving), i.e. pays per GPU-hour.
    """
    df = throughput.copy()
    tps = df[tokens_col].astype(float)
    df["usd_per_1m_one_replica"] = usd_per_instance_hour / (tps * SECONDS_PER_HOUR) * 1e6
    df["usd_per_1m_instance_full"] = df["usd_per_1m_one_replica"] * gpus_used / gpus_per_instance
    return df


def training_cost_table(params: float, tokens: float, mfu: float, prices: Any) -> Any:
    """Wall time and cost of one training run on one instance of each type in ``prices`` (a price table frame),
    all GPUs of the instance busy at the same MFU (an assumption outside the hardware MFU was measured on)."""
    rows = []
    for _, r in prices.iterrows():
        spec = accelerator_spec(r["accelerator"])
        if spec is None or not spec.bf16_tflops:
            continue
        run = training_run_cost(params, tokens, gpus=int(r["accelerators"]), peak_tflops_per_gpu=spec.bf16_tflops,
                                mfu=mfu, usd_per_instance_hour=r["on_demand_usd_per_h"],
                                gpus_per_instance=int(r["accelerators"]))
        rows.append({"instance_type": r["instance_type"], "accelerators": int(r["accelerators"]),
                     "bf16_tflops_each": spec.bf16_tflops, "wall_h": run.wall_h, "usd": run.usd,
                     "usd_per_h": r["on_demand_usd_per_h"]})
    return pd.DataFrame(rows).sort_values("usd").reset_index(drop=True)


# ----------------------------------------------------------------------------- inputs: measured or not
# Datasheet row (smml_lib.perf.hardware.SPECS, dense peaks) for each accelerator in the price snapshot.
SPEC_FOR_ACCELERATOR = {"NVIDIA L4": "L4", "NVIDIA A10G": "A10G", "NVIDIA A100": "A100 40GB SXM",
                        "NVIDIA H100": "H100 SXM", "AWS Trainium": "Trainium1"}


def accelerator_spec(accelerator: str) -> Any:
    """The ``AcceleratorSpec`` of an instance's accelerator name as the price table lists it (None if unknown)."""
    name = SPEC_FOR_ACCELERATOR.get(accelerator)
    return next((s for s in SPECS if s.name == name), None)


@dataclass
class Inputs:
    """Throughput numbers for the cost calculators and, above all, where they come from."""

    name: str
    frame: Any  # DataFrame
    source: str  # "own", "reference", or "prediction" / "assumption" when nothing was measured
    label: str  # one line for the notebook: whose measurement, on what device, when

    @property
    def measured(self) -> bool:
        return self.source in ("own", "reference")


def load_inputs(name: str, mode: str, required: Sequence[str], fallback: Any, fallback_label: str) -> Inputs:
    """A saved lab result (yours, else the committed reference) with ``required`` columns, else ``fallback``.

    ``fallback`` is a DataFrame computed from a labelled prediction or assumption; ``fallback_label`` says
    which (it is shown as is, so start it with PREDICTION or ASSUMPTION).
    """
    kind = fallback_label.split()[0].strip(":").lower()  # "prediction" or "assumption"
    try:
        res = load_result(name, mode=mode)
    except FileNotFoundError:
        return Inputs(name, fallback, kind, f"{fallback_label} (no saved result {name!r})")
    missing = [c for c in required if c not in res.frame.columns]
    if missing or res.frame.empty:
        return Inputs(name, fallback, kind,
                      f"{fallback_label} (result {name!r} at {res.path} lacks columns {missing})")
    env = res.meta.get("env") or {}
    who = "your own" if res.source == "own" else "the committed reference"
    label = (f"{who} result {name!r}: {res.meta.get('mode') or '?'} mode on {env.get('device_name', '?')}, "
             f"saved {str(res.meta.get('saved_utc', '?'))[:10]}")
    return Inputs(name, res.frame, res.source, label)


def decode_roofline(batch_sizes: Sequence[int], *, weight_bytes: float, params: float, bandwidth_gbs: float,
                    peak_tflops: float) -> Any:
    """Upper bound on decode tokens/s per accelerator: every step reads all weights once (memory bound)
    until 2·params FLOPs per token hit the compute peak. KV-cache reads are ignored, so it is optimistic."""
    mem_bound = bandwidth_gbs * 1e9 / weight_bytes  # steps per second, each step makes `batch` tokens
    compute_bound = peak_tflops * 1e12 / (2 * params)
    return pd.DataFrame({"batch_size": list(batch_sizes),
                         "decode_tokens_per_s": [min(b * mem_bound, compute_bound) for b in batch_sizes]})
