"""Telemetry against a fake pynvml: values and units, throttle decoding, energy deltas, phases, fallback, robustness."""

from __future__ import annotations

import sys
import time
import types

import pytest

from smml_lib.perf import nvml, telemetry, telemetry_backends


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_NoPermission(NVMLError):
    pass


def fake_pynvml(n_gpus: int = 2, *, energy_step_mj: int = 5000, reasons: int = 0x4 | 0x1, init_error=None,
                supports_pcie: bool = True, pcie_error: type = NVMLError_NotSupported) -> types.ModuleType:
    """A pynvml stand-in: fixed readings, an energy counter that grows by ``energy_step_mj`` per read."""
    m = types.ModuleType("pynvml")
    m.NVML_TEMPERATURE_GPU, m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM = 0, 1, 2
    m.NVML_PCIE_UTIL_TX_BYTES, m.NVML_PCIE_UTIL_RX_BYTES = 0, 1
    m.NVMLError = NVMLError
    state = {"energy": {i: 1_000_000 for i in range(n_gpus)}, "pcie_calls": 0}
    m.state = state

    def init():
        if init_error:
            raise init_error("libnvidia-ml.so.1 not found")

    m.nvmlInit = init
    m.nvmlSystemGetDriverVersion = lambda: "550.54"
    m.nvmlDeviceGetCount = lambda: n_gpus
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=90 + h, memory=40)
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=3_000_000_000, total=24e9, free=21e9)
    m.nvmlDeviceGetPowerUsage = lambda h: 71_500  # mW
    m.nvmlDeviceGetTemperature = lambda h, kind: 65
    m.nvmlDeviceGetClockInfo = lambda h, kind: {1: 2040, 2: 6251}[kind]
    m.nvmlDeviceGetMaxClockInfo = lambda h, kind: {1: 2040, 2: 6251}[kind]
    m.nvmlDeviceGetCurrentClocksEventReasons = lambda h: reasons

    def energy(h):
        state["energy"][h] += energy_step_mj
        return state["energy"][h]

    m.nvmlDeviceGetTotalEnergyConsumption = energy

    def pcie(h, kind):
        state["pcie_calls"] += 1
        if not supports_pcie:
            raise pcie_error()
        return {0: 2_000, 1: 500_000}[kind]  # KB/s

    m.nvmlDeviceGetPcieThroughput = pcie
    return m


@pytest.fixture
def use_fake(monkeypatch):
    """Install a fake pynvml and forget NVML's cached state before and after."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def install(mod):
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        nvml.reset_for_tests()
        return mod

    yield install
    nvml.reset_for_tests()


def test_throttle_reason_decoding():
    assert telemetry_backends.decode_throttle_reasons(0) == []
    assert telemetry_backends.decode_throttle_reasons(None) == []
    assert telemetry_backends.decode_throttle_reasons(0x1) == ["gpu_idle"]
    assert telemetry_backends.decode_throttle_reasons(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert telemetry_backends.decode_throttle_reasons(0x1000 | 0x8) == ["hw_slowdown", "0x1000"]
    assert telemetry_backends.is_throttled(0x4) and telemetry_backends.is_throttled(0x80)
    # idle / application clocks: not throttling
    assert not telemetry_backends.is_throttled(0x1) and not telemetry_backends.is_throttled(0x2)


def test_nvml_backend_values_and_units(use_fake):
    use_fake(fake_pynvml(n_gpus=2))
    backend = telemetry_backends.make_backend()
    assert backend.name == "nvml" and backend.indices == [0, 1]
    rows = backend.read()
    assert [r["gpu"] for r in rows] == [0, 1]
    r = rows[1]
    assert r["util_gpu_pct"] == 91 and r["util_mem_pct"] == 40 and r["mem_used_gb"] == 3.0
    assert r["power_w"] == 71.5 and r["temp_c"] == 65 and r["sm_clock_mhz"] == 2040 and r["mem_clock_mhz"] == 6251
    assert r["pcie_tx_mbps"] == 2.0 and r["pcie_rx_mbps"] == 500.0  # KB/s -> MB/s
    assert r["throttle_reasons"] == "gpu_idle,sw_power_cap" and r["throttled"] is True
    assert backend.read()[0]["pcie_rx_mbps"] is None  # PCIe read at most once per pcie_interval_s


def test_cuda_visible_devices_limits_the_gpus(use_fake, monkeypatch):
    use_fake(fake_pynvml(n_gpus=4))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert telemetry_backends.make_backend().indices == [2, 3]
    # In a container NVML may number only the GPUs it is given while the variable names host indices.
    use_fake(fake_pynvml(n_gpus=1))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert telemetry_backends.make_backend().indices == [0]


@pytest.mark.parametrize("error", [NVMLError_NotSupported, NVMLError_NoPermission])
def test_unsupported_metric_is_dropped_not_fatal(use_fake, error):
    mod = use_fake(fake_pynvml(n_gpus=1, supports_pcie=False, pcie_error=error))
    backend = telemetry_backends.NvmlBackend([0], pcie_interval_s=0.0)
    for _ in range(3):
        row = backend.read()[0]
    assert row["pcie_rx_mbps"] is None and row["power_w"] == 71.5
    assert mod.state["pcie_calls"] == 1  # asked once, then switched off


def test_sampler_energy_delta_phases_and_summary(use_fake):
    use_fake(fake_pynvml(n_gpus=1, energy_step_mj=1000, reasons=0x4))
    with telemetry.Sampler(interval_s=0.01) as tel:
        with tel.phase("prefill"):
            time.sleep(0.05)
        with tel.phase("decode"):
            time.sleep(0.08)
    df = tel.frame
    assert tel.backend_name == "nvml" and len(df) >= 8
    assert {"prefill", "decode"} <= set(df["phase"])
    assert (df["energy_j"].diff().dropna() > 0).all()  # the counter only grows
    assert df["energy_j"].iloc[-1] >= len(df)  # each reading of the fake counter adds 1 J
    ph = tel.phases_frame()
    assert list(ph["phase"]) == ["prefill", "decode"] and (ph["duration_s"] > 0.04).all()
    assert (ph["energy_j"] >= 1.0).all()
    s = tel.summary()
    assert len(s) == 1 and s["power_w_mean"].iloc[0] == 71.5 and s["sm_clock_mhz_max"].iloc[0] == 2040
    assert s["throttled_share"].iloc[0] == 1.0 and s["throttle_reasons_seen"].iloc[0] == "sw_power_cap"
    assert s["energy_j"].iloc[0] == pytest.approx(df["energy_j"].max())
    by = tel.summary(by_phase=True)
    assert {"prefill", "decode"} <= set(by["phase"])
    ov = tel.overhead()
    assert ov["samples"] >= 8 and 0 <= ov["cpu_pct_of_one_core"] < 100


def test_a_phase_shorter_than_the_interval_still_has_a_sample(use_fake):
    use_fake(fake_pynvml(n_gpus=1))
    with telemetry.Sampler(interval_s=10.0) as tel:  # the background thread reads once, at the start
        time.sleep(0.02)
        with tel.phase("prefill"):
            pass
        with tel.phase("decode"):
            time.sleep(0.01)
    assert {"prefill", "decode"} <= set(tel.frame["phase"])
    assert list(tel.frame["phase"]).count("prefill") == 1


def test_energy_delta_is_exact(use_fake):
    mod = use_fake(fake_pynvml(n_gpus=1, energy_step_mj=0))
    tel = telemetry.Sampler(interval_s=0.05).start()
    mod.state["energy"][0] += 123_456  # the GPU used 123.456 J
    time.sleep(0.12)
    tel.stop()
    assert tel.frame["energy_j"].iloc[-1] == pytest.approx(123.456)
    assert tel.frame["energy_j"].iloc[0] in (0.0, pytest.approx(123.456))


def test_missing_library_falls_back_to_cpu_once(use_fake, capsys, monkeypatch):
    use_fake(fake_pynvml(init_error=NVMLError_LibraryNotFound))
    telemetry_backends.announce_fallback_again()
    with telemetry.Sampler(interval_s=0.02) as tel:
        sum(i * i for i in range(200_000))
    with telemetry.Sampler(interval_s=0.02):
        pass
    out = capsys.readouterr().out
    assert out.count("using the CPU backend") == 1 and "no NVIDIA driver" in out
    assert tel.backend_name == "cpu"
    df = tel.frame
    assert {"cpu_percent", "rss_gb", "system_cpu_percent"} <= set(df.columns) and (df["rss_gb"] > 0).all()
    s = tel.summary()
    assert s["backend"].iloc[0] == "cpu" and s["rss_gb_max"].iloc[0] > 0 and "energy_j" not in s
    with pytest.raises(RuntimeError, match="NVML telemetry unavailable"):
        telemetry_backends.make_backend("nvml")


def test_failing_backend_never_crashes_the_work():
    class Broken:
        name = "nvml"

        def read(self):
            raise RuntimeError("GPU fell off the bus")

        def energy_mj(self):
            raise RuntimeError("no energy")

    tel = telemetry.Sampler(interval_s=0.01, backend="cpu")
    tel.backend = Broken()
    with tel:
        with tel.phase("work"):
            time.sleep(0.03)
    assert tel.frame.empty and tel.errors and "fell off the bus" in tel.errors[0]
    assert tel.summary().empty and tel.phases_frame()["energy_j"].isna().all()
    assert tel.plot() is None


def test_timeline_plot_with_phases(use_fake, tmp_path, monkeypatch):
    monkeypatch.setenv("SMML_OUTPUT_DIR", str(tmp_path))
    use_fake(fake_pynvml(n_gpus=2))
    with telemetry.Sampler(interval_s=0.01, label="test") as tel:
        with tel.phase("a"):
            time.sleep(0.03)
    axes = tel.plot(name="test_timeline")
    assert len(axes) == 4 and (tmp_path / "figures" / "test_timeline.png").exists()


def test_bad_arguments():
    with pytest.raises(ValueError):
        telemetry.Sampler(interval_s=0)
    with pytest.raises(ValueError):
        telemetry_backends.make_backend("gpu")


def test_sampler_for_one_torch_device_reads_only_its_gpu(use_fake, monkeypatch):
    import torch

    use_fake(fake_pynvml(n_gpus=4))
    assert telemetry_backends.nvml_indices_of(torch.device("cuda:2")) == [2]
    assert telemetry_backends.nvml_indices_of(torch.device("cpu")) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")  # torch's cuda:1 is the machine's GPU 1
    assert telemetry_backends.nvml_indices_of(torch.device("cuda:1")) == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8d6e0d0e")  # UUIDs: unknown mapping, sample every GPU
    assert telemetry_backends.nvml_indices_of(torch.device("cuda:0")) is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    tel = telemetry.Sampler(interval_s=0.05, device=torch.device("cuda:3"))
    assert tel.backend.indices == [3]
