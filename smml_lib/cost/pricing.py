"""Instance prices: live from AWS when credentials exist, else the bundled snapshot (``smml prices``).

Module 04 turns your measured throughput into dollars, so it needs a price per instance-hour. Two sources:

- **Live** (when AWS credentials are configured): the AWS Price List API (``pricing.get_products``) for the
  on-demand Linux price, ``ec2.describe_spot_price_history`` for the current spot price per availability
  zone, and ``ec2.describe_instance_types`` for the accelerators each instance carries.
- **Snapshot** (no credentials, no network, CI): ``smml_lib/data/prices_aws_snapshot.json``, copied from
  SkyPilot's public AWS catalog with its source, commit and date caveats recorded inside the file.

``get_prices()`` decides within seconds and always says which one it used. It never probes the EC2
metadata address off EC2, uses short botocore timeouts without retries, and gives up on the live path
at the first failure (so an offline laptop waits a few seconds at most, not once per instance type).

**Why the Pricing filters look fussy.** ``get_products`` returns every SKU matching the filters, and one
instance type has dozens: Windows, RHEL, dedicated tenancy, capacity-reservation variants, pre-installed
SQL Server... Only the combination below selects the single plain on-demand Linux SKU, and we check that
exactly one came back rather than silently taking the first.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from smml_lib.common import plots
from smml_lib.common.credentials import aws_credentials_source, on_ec2, redact
from smml_lib.common.display import show_frame

SNAPSHOT_PATH = Path(__file__).resolve().parents[1] / "data" / "prices_aws_snapshot.json"
COURSE_INSTANCES = ("g6.xlarge", "g6.12xlarge", "g6.48xlarge", "g5.12xlarge", "p4d.24xlarge", "p5.48xlarge",
                    "trn1.32xlarge")
# The Price List API filters on the region's display name ("location"), not its code.
LOCATIONS = {"us-east-1": "US East (N. Virginia)", "us-east-2": "US East (Ohio)",
             "us-west-1": "US West (N. California)",
             "us-west-2": "US West (Oregon)", "eu-central-1": "EU (Frankfurt)", "eu-west-1": "EU (Ireland)",
             "eu-west-2": "EU (London)", "eu-north-1": "EU (Stockholm)", "ap-northeast-1": "Asia Pacific (Tokyo)",
             "ap-south-1": "Asia Pacific (Mumbai)", "ap-southeast-2": "Asia Pacific (Sydney)",
             "ca-central-1": "Canada (Central)"}
PRICING_API_REGION = "us-east-1"  # the Price List API lives in us-east-1, eu-central-1 and ap-south-1 only
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 2, 5


class PriceLookupError(RuntimeError):
    """A price could not be looked up (no credentials, no network, an ambiguous SKU...); the message says why."""


# --------------------------------------------------------------------------------------------- snapshot
@lru_cache(maxsize=1)
def load_snapshot() -> dict[str, Any]:
    """The bundled price snapshot as a dict (source, date caveat, on_demand, spot, capacity_blocks, instances)."""
    return json.loads(SNAPSHOT_PATH.read_text())


def snapshot_label() -> str:
    snap = load_snapshot()
    src = snap["source"]
    return f"bundled snapshot ({src['dataset']} {src['path']} @{src['commit'][:8]}, as of {snap['date']['as_of']})"


def _check_known(instance_types: Iterable[str], known: Iterable[str]) -> list[str]:
    types, known = list(instance_types), set(known)
    unknown = [t for t in types if t not in known]
    if unknown:
        raise PriceLookupError(f"No snapshot price for {unknown}: the snapshot covers {sorted(known)}. "
                               "Configure AWS credentials for live prices of any instance type.")
    return types


def snapshot_spot(instance_type: str, region: str = "us-east-1") -> Any:
    """Spot price per availability zone from the snapshot (one sample per AZ; spot prices move)."""
    rows = [r for r in load_snapshot()["spot"] if r["instance_type"] == instance_type and r["region"] == region]
    return pd.DataFrame(rows, columns=["instance_type", "region", "availability_zone_id", "usd_per_hour"])


def snapshot_prices(instance_types: Iterable[str] = COURSE_INSTANCES, region: str = "us-east-1") -> Any:
    """One row per instance type: specs, on-demand $/h and the spot range across the region's AZs (snapshot)."""
    snap = load_snapshot()
    types = _check_known(instance_types, snap["instances"])
    od = {r["instance_type"]: r["usd_per_hour"] for r in snap["on_demand"] if r["region"] == region}
    rows = []
    for t in types:
        spot = snapshot_spot(t, region)["usd_per_hour"]
        spec = snap["instances"][t]
        rows.append({"instance_type": t, "region": region, "accelerator": spec["accelerator"],
                     "accelerators": spec["accelerator_count"],
                     "accelerator_memory_mib": spec["accelerator_memory_mib"],
                     "on_demand_usd_per_h": od.get(t, float("nan")),
                     "spot_min_usd_per_h": spot.min() if len(spot) else float("nan"),
                     "spot_max_usd_per_h": spot.max() if len(spot) else float("nan"),
                     "spot_zones": len(spot), "source": "snapshot"})
    df = pd.DataFrame(rows)
    df["on_demand_usd_per_accelerator_h"] = df["on_demand_usd_per_h"] / df["accelerators"]
    return df


# ------------------------------------------------------------------------------------------------- live
def _session() -> Any:
    import boto3  # deferred: optional extra [aws]

    if not on_ec2():  # off EC2 an instance role cannot exist: never let botocore probe 169.254.169.254
        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    return boto3.session.Session()


def client_config() -> Any:
    """Short timeouts and a single attempt: a missing network fails in seconds instead of retrying for minutes."""
    from botocore.config import Config  # deferred: optional extra [aws]

    return Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                  retries={"total_max_attempts": 1, "mode": "standard"})


def pricing_filters(instance_type: str, region: str = "us-east-1") -> list[dict[str, str]]:
    """The ``get_products`` filters that select exactly one on-demand Linux SKU for an instance type in a region."""
    if region not in LOCATIONS:
        raise PriceLookupError(f"Unknown region {region!r} for the Price List API: add its display name to "
                               f"smml_lib.cost.pricing.LOCATIONS (known: {sorted(LOCATIONS)}).")
    wanted = {"instanceType": instance_type, "location": LOCATIONS[region], "operatingSystem": "Linux",
              "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used",
              "licenseModel": "No License required"}
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in wanted.items()]


def parse_on_demand_price(price_list: list[str]) -> float:
    """USD per hour from a ``get_products`` PriceList that must hold exactly one SKU with one hourly price."""
    if len(price_list) != 1:
        raise PriceLookupError(f"Expected exactly one on-demand Linux SKU, got {len(price_list)}: the filters are "
                               "ambiguous (or the instance type is not offered in that region).")
    product = json.loads(price_list[0])  # each entry is a JSON *string*
    terms = list(product["terms"]["OnDemand"].values())
    dims = [d for term in terms for d in term["priceDimensions"].values()]
    if len(dims) != 1 or dims[0]["unit"] not in ("Hrs", "Hours"):
        got = [(d["unit"], d["description"]) for d in dims]
        raise PriceLookupError(f"Expected one hourly price dimension, got {got}")
    return float(dims[0]["pricePerUnit"]["USD"])


def live_on_demand_price(instance_type: str, region: str = "us-east-1", client: Any = None) -> float:
    """The on-demand Linux price in USD/hour from the AWS Price List API."""
    client = client or _session().client("pricing", region_name=PRICING_API_REGION, config=client_config())
    resp = client.get_products(ServiceCode="AmazonEC2", Filters=pricing_filters(instance_type, region),
                               FormatVersion="aws_v1", MaxResults=100)
    if resp.get("NextToken"):
        raise PriceLookupError(f"More than 100 SKUs match {instance_type} in {region}: the filters are ambiguous.")
    return parse_on_demand_price(resp["PriceList"])


def live_spot_prices(instance_types: Iterable[str], region: str = "us-east-1", client: Any = None) -> Any:
    """The current Linux spot price per availability zone (``describe_spot_price_history`` at now)."""
    client = client or _session().client("ec2", region_name=region, config=client_config())
    resp = client.describe_spot_price_history(InstanceTypes=list(instance_types), ProductDescriptions=["Linux/UNIX"],
                                              StartTime=_dt.datetime.now(_dt.timezone.utc), MaxResults=1000)
    rows = [{"instance_type": h["InstanceType"], "region": region, "availability_zone": h["AvailabilityZone"],
             "usd_per_hour": float(h["SpotPrice"]), "timestamp": h["Timestamp"]}
            for h in resp["SpotPriceHistory"] if h["ProductDescription"].startswith("Linux/UNIX")]
    df = pd.DataFrame(rows, columns=["instance_type", "region", "availability_zone", "usd_per_hour", "timestamp"])
    if df.empty:
        return df
    latest = df.sort_values("timestamp").groupby(["instance_type", "availability_zone"], as_index=False).last()
    return latest.sort_values(["instance_type", "availability_zone"]).reset_index(drop=True)


def live_instance_specs(instance_types: Iterable[str], region: str = "us-east-1", client: Any = None) -> Any:
    """Accelerator name, count and memory per instance type from ``describe_instance_types`` (GPUs or Neuron)."""
    client = client or _session().client("ec2", region_name=region, config=client_config())
    rows = []
    for it in client.describe_instance_types(InstanceTypes=list(instance_types))["InstanceTypes"]:
        accel = it.get("GpuInfo", {}).get("Gpus") or it.get("NeuronInfo", {}).get("NeuronDevices") or [{}]
        a = accel[0]
        maker = a.get("Manufacturer", "AWS" if "NeuronInfo" in it else "")
        rows.append({"instance_type": it["InstanceType"], "accelerator": f"{maker} {a.get('Name', '-')}".strip(),
                     "accelerators": int(a.get("Count", 0)),
                     "accelerator_memory_mib": int(a.get("MemoryInfo", {}).get("SizeInMiB", 0)),
                     "vcpus": it["VCpuInfo"]["DefaultVCpus"], "memory_gib": it["MemoryInfo"]["SizeInMiB"] / 1024})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- the chooser
@dataclass
class PriceTable:
    """Prices per instance type and where they came from (``source`` is ``"live"`` or ``"snapshot"``)."""

    frame: Any  # DataFrame, one row per instance type
    spot: Any  # DataFrame, one row per instance type and availability zone
    source: str
    message: str

    def _repr_html_(self) -> str:
        return f"<p><b>Prices: {self.source}</b> - {self.message}</p>" + self.frame.to_html(index=False)


def _live_table(types: list[str], region: str, pricing_client: Any, ec2_client: Any) -> tuple[Any, Any]:
    specs = live_instance_specs(types, region, ec2_client).set_index("instance_type")
    spot = live_spot_prices(types, region, ec2_client)
    rows = []
    for t in types:
        zones = spot.loc[spot["instance_type"] == t, "usd_per_hour"]
        s = specs.loc[t] if t in specs.index else {}
        rows.append({"instance_type": t, "region": region, "accelerator": s.get("accelerator", "-"),
                     "accelerators": int(s.get("accelerators", 0)),
                     "accelerator_memory_mib": int(s.get("accelerator_memory_mib", 0)),
                     "on_demand_usd_per_h": live_on_demand_price(t, region, pricing_client),
                     "spot_min_usd_per_h": zones.min() if len(zones) else float("nan"),
                     "spot_max_usd_per_h": zones.max() if len(zones) else float("nan"),
                     "spot_zones": len(zones), "source": "live"})

    df = pd.DataFrame(rows)
    df["on_demand_usd_per_accelerator_h"] = df["on_demand_usd_per_h"] / df["accelerators"].where(df["accelerators"] > 0)
    return df, spot


def get_prices(instance_types: Iterable[str] = COURSE_INSTANCES, region: str = "us-east-1", *, live: str = "auto",
               pricing_client: Any = None, ec2_client: Any = None) -> PriceTable:
    """Prices for ``instance_types`` in ``region``: live from AWS when possible, else the bundled snapshot.

    Args:
        live: ``"auto"`` (live when credentials exist, snapshot otherwise or on any error), ``"live"`` (raise
            ``PriceLookupError`` instead of falling back) or ``"snapshot"`` (never touch the network).
        pricing_client, ec2_client: pre-built boto3 clients (tests pass stubbed ones).
    """
    if live not in ("auto", "live", "snapshot"):
        raise ValueError(f"live={live!r}: use 'auto', 'live' or 'snapshot'")
    types = list(instance_types)

    def fallback(why: str) -> PriceTable:
        snap_spot = load_snapshot()["spot"]

        spot = pd.DataFrame([r for r in snap_spot if r["instance_type"] in types and r["region"] == region])
        return PriceTable(snapshot_prices(types, region), spot, "snapshot",
                          f"{why} Using the {snapshot_label()}. {load_snapshot()['date']['caveat']}")

    if live == "snapshot":
        return fallback("Snapshot requested.")
    creds = aws_credentials_source() if pricing_client is None else "the clients passed in"
    if creds is None:
        if live == "live":
            raise PriceLookupError("No AWS credentials found (environment, ~/.aws, container role): run `aws configure`"
                                   " or set AWS_PROFILE, or use the snapshot (live='auto').")
        return fallback("No AWS credentials found, so no live prices.")
    try:
        import botocore.exceptions as bexc  # deferred: optional extra [aws]

        frame, spot = _live_table(types, region, pricing_client, ec2_client)
    except (PriceLookupError, bexc.BotoCoreError, bexc.ClientError, ImportError, KeyError) as exc:
        why = redact(f"{type(exc).__name__}: {exc}")[:300]
        if live == "live":
            raise PriceLookupError(f"Live price lookup failed ({why})") from exc
        return fallback(f"Live lookup with credentials from {creds} failed ({why}).")
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return PriceTable(frame, spot, "live", f"Live AWS prices fetched {now} with credentials from {creds} "
                      "(Price List API for on-demand, spot price history for spot).")


def plot_prices(table: PriceTable, name: str = "m04_prices_per_accelerator_hour") -> None:
    """Bars: on-demand $ per accelerator-hour per instance type, with the spot range across AZs as a line."""
    df = table.frame.sort_values("on_demand_usd_per_accelerator_h")
    fig, ax = plots.figure(size=(8, 4), title=f"Price per accelerator-hour ({table.source}, {df['region'].iloc[0]})")
    plots.bars(df, "instance_type", "on_demand_usd_per_accelerator_h", ax=ax, annotate="{:.2f}", color="#4c72b0")

    for i, (_, r) in enumerate(df.iterrows()):
        lo, hi = r["spot_min_usd_per_h"] / r["accelerators"], r["spot_max_usd_per_h"] / r["accelerators"]
        ax.plot([i, i], [lo, hi], color="#dd8452", lw=6, solid_capstyle="butt")
    ax.set_ylabel("USD per accelerator-hour")
    ax.legend(handles=[Patch(color="#4c72b0", label="on-demand"),
                       Line2D([], [], color="#dd8452", lw=6, label="spot, lowest to highest AZ")], loc="upper left")
    src = snapshot_label() if table.source == "snapshot" else "live AWS prices"
    plots.finish(fig, name, caption=f"{src} · {_dt.date.today().isoformat()}")


def plot_spot_zones(spot: Any, on_demand_usd_per_h: float, instance_type: str, name: str | None = None) -> None:
    """Bars: the spot price in each availability zone against the on-demand price (dashed)."""
    zcol = "availability_zone_id" if "availability_zone_id" in spot.columns else "availability_zone"
    df = spot[spot["instance_type"] == instance_type].sort_values(zcol)
    fig, ax = plots.figure(size=(6.5, 3.6), title=f"{instance_type}: spot price per availability zone")
    plots.bars(df, zcol, "usd_per_hour", ax=ax, annotate="{:.2f}", color="#dd8452")
    ax.axhline(on_demand_usd_per_h, ls="--", color="0.3", label=f"on-demand {on_demand_usd_per_h:.2f}")
    ax.set_ylabel("USD per instance-hour")
    ax.legend()
    plots.finish(fig, name or f"m04_spot_zones_{instance_type.replace('.', '_')}")


def cli(argv: list[str]) -> int:
    """``smml prices [--region R] [--live | --snapshot] [--spot] [INSTANCE_TYPE ...]``."""
    p = argparse.ArgumentParser(prog="smml prices", description=__doc__.split("\n")[0])
    p.add_argument("instance_types", nargs="*", default=list(COURSE_INSTANCES))
    p.add_argument("--region", default="us-east-1")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--live", action="store_const", const="live", dest="live", help="fail instead of falling back")
    mode.add_argument("--snapshot", action="store_const", const="snapshot", dest="live", help="never use the network")
    p.add_argument("--spot", action="store_true", help="also list the spot price per availability zone")
    args = p.parse_args(argv)
    try:
        table = get_prices(args.instance_types, args.region, live=args.live or "auto")
    except PriceLookupError as exc:
        print(f"smml prices: {exc}")
        return 1
    print(f"source: {table.source} - {table.message}\n")
    show_frame(table.frame.drop(columns=["source"]))
    if args.spot:
        print()
        show_frame(table.spot, caption="spot price per availability zone (USD/h)")
    return 0
