"""Device detection, the datasheet table and measured ceilings (CPU path; GPU paths run where GPUs exist)."""

from __future__ import annotations

import pytest

from smml_lib.perf import ceilings, hardware, roofline

# Names as torch.cuda.get_device_name reports them -> expected datasheet row.
TORCH_NAMES = {
    "NVIDIA L4": "L4",
    "NVIDIA A10G": "A10G",
    "NVIDIA A10": "A10",
    "Tesla T4": "T4",
    "NVIDIA L40S": "L40S",
    "NVIDIA A100-SXM4-40GB": "A100 40GB SXM",
    "NVIDIA A100-SXM4-80GB": "A100 80GB SXM",
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H200": "H200",
}


@pytest.mark.parametrize("torch_name,row", TORCH_NAMES.items())
def test_lookup_matches_the_names_torch_reports(torch_name, row):
    found = hardware.lookup_spec(torch_name)
    assert found.found and found.spec.name == row


@pytest.mark.parametrize("name", ["NVIDIA GeForce RTX 4090", "NVIDIA H200 NVL", "AMD EPYC 7B13", ""])
def test_unknown_device_gives_a_clear_no_datasheet_result(name):
    found = hardware.lookup_spec(name)
    assert not found.found and found.spec is None
    assert "no datasheet entry" in found.message and "measured ceilings" in found.message


def test_peaks_are_dense_not_sparse():
    l4 = hardware.lookup_spec("NVIDIA L4").spec
    assert l4.bf16_tflops == 121 and l4.fp8_tflops == 242  # the datasheet headlines 242 / 485 with sparsity
    assert hardware.lookup_spec("NVIDIA H100 80GB HBM3").spec.bf16_tflops == 989
    assert hardware.lookup_spec("Tesla T4").spec.peak_tflops("bf16") is None  # T4 has no bf16


def test_ridge_points_by_hand():
    assert roofline.datasheet_roof("NVIDIA L4", "bf16").ridge_point == pytest.approx(121e12 / 300e9)
    assert roofline.datasheet_roof("NVIDIA H100 80GB HBM3", "bf16").ridge_point == pytest.approx(989e12 / 3350e9)


def test_every_row_has_a_source_and_the_required_chips():
    table = hardware.spec_table()
    assert table["source"].str.len().min() > 10
    for chip in ["L4", "A10G", "T4", "L40S", "A100 40GB SXM", "A100 80GB SXM", "H100 SXM", "H100 PCIe", "H200"]:
        assert chip in set(table["name"])
    required = table[table["name"].isin(TORCH_NAMES.values())]
    assert (required[["fp32_tflops", "memory_gb", "bandwidth_gbs"]] > 0).all().all()


def test_detect_on_cpu_returns_the_cpu():
    devices = hardware.detect()
    assert len(devices) == 1 and devices[0].kind == "cpu" and devices[0].memory_gb > 0
    assert hardware.supported_dtypes("cpu") == ["fp32", "bf16"]
    assert hardware.peer_access_matrix().empty


def test_measured_ceilings_on_cpu_are_positive_and_consistent():
    c = ceilings.measure_ceilings("cpu", matmul_size=256, copy_mib=16, iters=5)
    assert c.matmul_tflops > 0 and c.copy_gbps > 0
    assert c.copy_bytes == 2 * 16 * 2**20  # read + write
    assert c.ridge_point == pytest.approx(c.matmul_tflops * 1e12 / (c.copy_gbps * 1e9))
    row = c.summary()
    assert row["matmul_dtype"] == "fp32" and row["method"] == "perf_counter"
