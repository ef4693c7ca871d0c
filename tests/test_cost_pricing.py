"""Prices: the bundled snapshot, the live path (Pricing API via botocore's Stubber, EC2 via moto) and the fallback.

No test talks to AWS: the Pricing API is stubbed (moto does not implement it), EC2 runs inside moto's
``mock_aws``, and the "network is down" case points the endpoints at a closed port on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from smml_lib.cost import pricing

GOOD_FILTERS = [
    {"Type": "TERM_MATCH", "Field": "instanceType", "Value": "g6.12xlarge"},
    {"Type": "TERM_MATCH", "Field": "location", "Value": "US East (N. Virginia)"},
    {"Type": "TERM_MATCH", "Field": "operatingSystem", "Value": "Linux"},
    {"Type": "TERM_MATCH", "Field": "tenancy", "Value": "Shared"},
    {"Type": "TERM_MATCH", "Field": "preInstalledSw", "Value": "NA"},
    {"Type": "TERM_MATCH", "Field": "capacitystatus", "Value": "Used"},
    {"Type": "TERM_MATCH", "Field": "licenseModel", "Value": "No License required"},
]


def price_list_entry(instance_type: str, usd: str, sku: str = "SKU123") -> str:
    """One PriceList entry shaped like the Price List API's (a JSON string, terms -> OnDemand -> priceDimensions)."""
    return json.dumps({
        "product": {"productFamily": "Compute Instance", "sku": sku,
                    "attributes": {"instanceType": instance_type, "operatingSystem": "Linux", "tenancy": "Shared"}},
        "serviceCode": "AmazonEC2",
        "terms": {"OnDemand": {f"{sku}.JRTCKXETXF": {
            "offerTermCode": "JRTCKXETXF", "sku": sku, "termAttributes": {},
            "priceDimensions": {f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                "unit": "Hrs", "beginRange": "0", "endRange": "Inf", "appliesTo": [],
                "description": f"${usd} per On Demand Linux {instance_type} Instance Hour",
                "pricePerUnit": {"USD": usd}}}}}},
    })


@pytest.fixture
def fake_aws_env(monkeypatch):
    """Fake credentials in the environment (moto and botocore need some); nothing reaches AWS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTTESTTESTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-value-123456")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def stubbed_pricing(entries_by_type: dict[str, list[str]]):
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("pricing", region_name="us-east-1")
    stub = Stubber(client)
    for itype, entries in entries_by_type.items():
        stub.add_response("get_products", {"PriceList": entries, "FormatVersion": "aws_v1"},
                          expected_params={"ServiceCode": "AmazonEC2", "Filters": pricing.pricing_filters(itype),
                                           "FormatVersion": "aws_v1", "MaxResults": 100})
    stub.activate()
    return client, stub


# ---------------------------------------------------------------------------------------------- snapshot
def test_snapshot_covers_course_instances_with_source_and_date():
    snap = pricing.load_snapshot()
    assert snap["source"]["commit"].startswith("00148f2a") and "caveat" in snap["date"]
    df = pricing.snapshot_prices()
    assert list(df["instance_type"]) == list(pricing.COURSE_INSTANCES)
    assert df["on_demand_usd_per_h"].notna().all() and (df["spot_zones"] > 0).all()
    row = df.set_index("instance_type").loc["g6.12xlarge"]
    # the figures of the reference table (SkyPilot catalog @00148f2a): 4.6016 on-demand, spot 1.76-2.10 in us-east-1
    assert row["on_demand_usd_per_h"] == pytest.approx(4.6016)
    assert (row["spot_min_usd_per_h"], row["spot_max_usd_per_h"]) == pytest.approx((1.7552, 2.0968))
    assert row["accelerators"] == 4 and row["on_demand_usd_per_accelerator_h"] == pytest.approx(1.1504)


def test_snapshot_unknown_instance_says_what_is_covered():
    with pytest.raises(pricing.PriceLookupError, match="snapshot covers"):
        pricing.snapshot_prices(["x9.huge"])


# ------------------------------------------------------------------------------------ Pricing API (Stubber)
def test_pricing_filters_select_one_linux_sku_and_parse_to_usd_per_hour(fake_aws_env):
    assert pricing.pricing_filters("g6.12xlarge", "us-east-1") == GOOD_FILTERS
    client, stub = stubbed_pricing({"g6.12xlarge": [price_list_entry("g6.12xlarge", "4.6016000000")]})
    assert pricing.live_on_demand_price("g6.12xlarge", "us-east-1", client) == pytest.approx(4.6016)
    stub.assert_no_pending_responses()


def test_pricing_ambiguous_or_missing_sku_is_an_error(fake_aws_env):
    two = [price_list_entry("g6.12xlarge", "4.6016", "A"), price_list_entry("g6.12xlarge", "9.9", "B")]
    client, _ = stubbed_pricing({"g6.12xlarge": two})
    with pytest.raises(pricing.PriceLookupError, match="exactly one"):
        pricing.live_on_demand_price("g6.12xlarge", "us-east-1", client)
    with pytest.raises(pricing.PriceLookupError, match="got 0"):
        pricing.parse_on_demand_price([])
    with pytest.raises(pricing.PriceLookupError, match="Unknown region"):
        pricing.pricing_filters("g6.12xlarge", "mars-north-1")


# ------------------------------------------------------------------------------------------- EC2 (moto)
def test_instance_specs_and_spot_history_from_moto(fake_aws_env):
    import boto3
    from moto import mock_aws

    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        specs = pricing.live_instance_specs(["g6.12xlarge", "trn1.32xlarge"], "us-east-1", ec2)
        specs = specs.set_index("instance_type")
        spot = pricing.live_spot_prices(["g6.12xlarge"], "us-east-1", ec2)
    # moto serves EC2's real DescribeInstanceTypes data: 4 x L4 at 22888 MiB, 16 Trainium devices at 32768 MiB
    assert specs.loc["g6.12xlarge", ["accelerator", "accelerators", "accelerator_memory_mib"]].tolist() == [
        "NVIDIA L4", 4, 22888]
    assert specs.loc["trn1.32xlarge", ["accelerator", "accelerators"]].tolist() == ["AWS Trainium", 16]
    # moto's spot prices are fake (0.00001 for every AZ): we only check the shape, one latest row per AZ
    assert len(spot) >= 2 and spot["availability_zone"].is_unique and (spot["usd_per_hour"] > 0).all()


def test_get_prices_live_path_with_stubbed_pricing_and_moto(fake_aws_env):
    import boto3
    from moto import mock_aws

    types = ["g6.xlarge", "g6.12xlarge"]
    client, stub = stubbed_pricing({"g6.xlarge": [price_list_entry("g6.xlarge", "0.8048")],
                                    "g6.12xlarge": [price_list_entry("g6.12xlarge", "4.6016")]})
    with mock_aws():
        table = pricing.get_prices(types, "us-east-1", pricing_client=client,
                                ec2_client=boto3.client("ec2", region_name="us-east-1"))
    stub.assert_no_pending_responses()
    assert table.source == "live" and "Live AWS prices" in table.message
    df = table.frame.set_index("instance_type")
    assert df.loc["g6.12xlarge", "on_demand_usd_per_h"] == pytest.approx(4.6016)
    assert df.loc["g6.12xlarge", "on_demand_usd_per_accelerator_h"] == pytest.approx(1.1504)
    assert df.loc["g6.xlarge", "accelerators"] == 1


# ------------------------------------------------------------------------------------------------ fallback
def test_no_credentials_falls_back_to_snapshot_at_once(no_aws_credentials):
    t0 = time.perf_counter()
    table = pricing.get_prices(["g6.12xlarge"])
    assert time.perf_counter() - t0 < 5  # "at once": no network attempt, only the snapshot is read
    assert table.source == "snapshot" and "No AWS credentials" in table.message and "snapshot" in table.message
    with pytest.raises(pricing.PriceLookupError, match="aws configure"):
        pricing.get_prices(["g6.12xlarge"], live="live")


def test_unreachable_aws_falls_back_within_seconds_and_keeps_secrets_out(fake_aws_env, monkeypatch):
    with socket.socket() as s:  # a port on loopback that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    table = pricing.get_prices(["g6.12xlarge", "p5.48xlarge"])
    assert time.perf_counter() - t0 < 2 * (pricing.CONNECT_TIMEOUT_S + 1)
    assert table.source == "snapshot" and "failed" in table.message
    assert "test-secret-value-123456" not in table.message
    assert table.frame["on_demand_usd_per_h"].tolist() == pytest.approx([4.6016, 55.04])
    with pytest.raises(pricing.PriceLookupError, match="Live price lookup failed"):
        pricing.get_prices(["g6.12xlarge"], live="live")


def test_cli_prints_source_and_table(no_aws_credentials, capsys):
    assert pricing.cli(["--snapshot", "--spot", "g6.12xlarge"]) == 0
    out = capsys.readouterr().out
    assert "source: snapshot" in out and "4.602" in out and "use1-az6" in out
    assert pricing.cli(["--live", "g6.12xlarge"]) == 1
    assert "aws configure" in capsys.readouterr().out
