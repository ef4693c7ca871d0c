"""The GPU-only paths, on a real CUDA device: CUDA-event timing, the GEMM harness against the datasheet, NVML.

Marked ``gpu``: skipped on CPU-only machines (CI) by conftest. On a GPU machine run
``SMML_TEST_GPU=1 pytest -m gpu`` (conftest hides GPUs from the other tests unless ``SMML_TEST_GPU`` is set).
These tests check mechanisms and physical bounds (nothing beats its datasheet peak), not target figures:
the figures live in the benchmarks (``smml bench --list``).
"""

from __future__ import annotations

import pytest
import torch

from smml_lib.perf import gemm, telemetry_backends
from smml_lib.perf.timing import benchmark

pytestmark = pytest.mark.gpu


def test_cuda_events_time_a_matmul_on_the_gpu():
    a = torch.randn(2048, 2048, device="cuda:0", dtype=torch.bfloat16)
    t = benchmark(lambda: a @ a, warmup=3, iters=20, device="cuda:0", dtype="bf16")
    assert t.method == "cuda_events" and t.iters == 20
    assert 0 < t.p10_s <= t.median_s <= t.p90_s
    assert t.env["device_name"] == torch.cuda.get_device_name(0)


def test_gemm_harness_stays_under_the_dense_datasheet_peak():
    row = gemm.time_gemm(gemm.GemmShape(4096, 4096, 4096), "bf16", "cuda:0", target_s=0.2)
    assert row["tflops"] > 0
    if row["peak_tflops"] is None:
        pytest.skip(f"{row['device_name']}: no datasheet entry to compare with")
    # A measurement above the dense peak means the timer missed work (no synchronisation), not a fast GPU.
    assert row["pct_of_peak"] < 105, row


def test_nvml_backend_reads_the_visible_gpu():
    backend = telemetry_backends.make_backend("nvml")
    rows = backend.read()
    assert rows and rows[0]["gpu"] == backend.indices[0]
    assert rows[0]["mem_used_gb"] is not None and rows[0]["mem_used_gb"] > 0
