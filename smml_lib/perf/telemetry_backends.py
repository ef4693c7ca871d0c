"""Where telemetry readings come from: NVML on an NVIDIA GPU, the process's CPU and memory elsewhere.

A backend has ``read()`` (one row per device with the metrics below, ``None`` for a reading the device
does not support) and ``energy_mj()`` (the energy counters). ``make_backend("auto")`` picks NVML when
the driver works and sees a GPU, else the CPU backend, and says so once per process.
``smml_lib.perf.telemetry.Sampler`` calls a backend in its background thread; tests give it a fake ``pynvml``.

Units: power in W (NVML reports mW), energy in mJ (the driver's counter since it loaded), PCIe in MB/s
(NVML reports KB/s over a 20 ms window), memory in GB (1e9 bytes), clocks in MHz.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

from smml_lib.common.display import show
from smml_lib.perf import nvml

# Clock-event ("throttle") reasons, nvml.h: nvmlClocksEventReason*.
THROTTLE_REASONS: dict[int, str] = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}
# The reasons that mean "slower than it could be because of power or heat" (idle and app clocks do not).
THROTTLING = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                        "hw_power_brake_slowdown"})
GPU_METRICS = ["util_gpu_pct", "util_mem_pct", "mem_used_gb", "power_w", "temp_c", "sm_clock_mhz",
               "mem_clock_mhz", "pcie_tx_mbps", "pcie_rx_mbps"]
CPU_METRICS = ["cpu_percent", "system_cpu_percent", "rss_gb"]
_fallback_said = {"done": False}  # the CPU fallback is announced once per process


def decode_throttle_reasons(mask: int | None) -> list[str]:
    """Names of the bits set in an NVML clock-event-reason bitmask (unknown bits as hex)."""
    if not mask:
        return []
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS)
    return names + ([hex(unknown)] if unknown else [])


def is_throttled(mask: int | None) -> bool:
    """True when a power or thermal reason is holding the clocks down."""
    return any(r in THROTTLING for r in decode_throttle_reasons(mask))


class NvmlBackend:
    """Reads each listed GPU through NVML. Metrics the GPU does not support are dropped after one try."""

    name = "nvml"

    def __init__(self, indices: list[int], *, pcie_interval_s: float = 1.0):
        self.mod = nvml.nvml()
        self.indices = indices
        self.handles = {i: nvml.handle(i) for i in indices}
        self.pcie_interval_s = pcie_interval_s
        self._last_pcie = -float("inf")
        self._off: set[str] = set()
        m = self.mod
        self._reasons_fn = getattr(m, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            m, "nvmlDeviceGetCurrentClocksThrottleReasons", None)

    def _get(self, metric: str, fn: Any, *args: Any) -> Any:
        if metric in self._off or fn is None:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # NVMLError_NotSupported / FunctionNotFound / NoPermission: stop asking
            if any(s in type(exc).__name__ for s in ("NotSupported", "FunctionNotFound", "NoPermission")):
                self._off.add(metric)
            return None

    def energy_mj(self) -> dict[int, float | None]:
        total = self.mod.nvmlDeviceGetTotalEnergyConsumption
        return {i: self._get("energy", total, h) for i, h in self.handles.items()}

    def read(self) -> list[dict[str, Any]]:
        m, now = self.mod, time.perf_counter()
        pcie = now - self._last_pcie >= self.pcie_interval_s
        if pcie:
            self._last_pcie = now
        rows = []
        for i, h in self.handles.items():
            util = self._get("util", m.nvmlDeviceGetUtilizationRates, h)
            mem = self._get("mem", m.nvmlDeviceGetMemoryInfo, h)
            power = self._get("power", m.nvmlDeviceGetPowerUsage, h)
            mask = self._get("reasons", self._reasons_fn, h)
            row = {"gpu": i, "util_gpu_pct": getattr(util, "gpu", None), "util_mem_pct": getattr(util, "memory", None),
                   "mem_used_gb": mem.used / 1e9 if mem is not None else None,
                   "power_w": power / 1e3 if power is not None else None,  # mW -> W
                   "temp_c": self._get("temp", m.nvmlDeviceGetTemperature, h, m.NVML_TEMPERATURE_GPU),
                   "sm_clock_mhz": self._get("sm_clock", m.nvmlDeviceGetClockInfo, h, m.NVML_CLOCK_SM),
                   "mem_clock_mhz": self._get("mem_clock", m.nvmlDeviceGetClockInfo, h, m.NVML_CLOCK_MEM),
                   "energy_mj": self._get("energy", m.nvmlDeviceGetTotalEnergyConsumption, h),
                   "throttle_mask": mask, "throttle_reasons": ",".join(decode_throttle_reasons(mask)),
                   "throttled": is_throttled(mask), "pcie_tx_mbps": None, "pcie_rx_mbps": None}
            if pcie:  # KB/s over a 20 ms window -> MB/s
                tx = self._get("pcie", m.nvmlDeviceGetPcieThroughput, h, m.NVML_PCIE_UTIL_TX_BYTES)
                rx = self._get("pcie", m.nvmlDeviceGetPcieThroughput, h, m.NVML_PCIE_UTIL_RX_BYTES)
                row["pcie_tx_mbps"] = tx / 1e3 if tx is not None else None
                row["pcie_rx_mbps"] = rx / 1e3 if rx is not None else None
            rows.append(row)
        return rows


class CpuBackend:
    """Fallback without NVML: this process's CPU % (100 = one core busy) and resident memory, plus system CPU %."""

    name = "cpu"

    MIN_WINDOW_S = 0.02  # CPU % over a shorter window is mostly rounding noise (it can read 500% on 2 cores)

    def __init__(self) -> None:
        self._psutil = psutil
        self.proc = psutil.Process()
        self._last = (time.perf_counter(), self._cpu_s())
        psutil.cpu_percent(None)  # the first call only starts the system-wide measurement interval

    def _cpu_s(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def energy_mj(self) -> dict[int, float | None]:
        return {}

    def read(self) -> list[dict[str, Any]]:
        now, cpu = time.perf_counter(), self._cpu_s()
        dt = now - self._last[0]
        pct = 100 * (cpu - self._last[1]) / dt if dt >= self.MIN_WINDOW_S else None
        if dt >= self.MIN_WINDOW_S:
            self._last = (now, cpu)
        return [{"gpu": None, "cpu_percent": pct, "system_cpu_percent": self._psutil.cpu_percent(None),
                 "rss_gb": self.proc.memory_info().rss / 1e9}]


def _visible_indices() -> list[int]:
    """NVML device indices to sample: all, or those in CUDA_VISIBLE_DEVICES when it lists plain integers."""
    n = nvml.device_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return list(range(n))
    parts = [p.strip() for p in env.split(",") if p.strip()]
    if all(p.isdigit() for p in parts):
        # In a container NVML may number only the GPUs it sees (0..n-1) while the variable holds host indices.
        return [int(p) for p in parts if int(p) < n] or list(range(n))
    return list(range(n))  # UUIDs: cannot map cheaply, sample every GPU


def nvml_indices_of(device: Any) -> list[int] | None:
    """NVML's index of a torch CUDA device, through CUDA_VISIBLE_DEVICES: ``[k]``, or None (sample every GPU).

    torch numbers the GPUs it was given (``cuda:0`` is the first of CUDA_VISIBLE_DEVICES); NVML numbers every
    GPU of the machine. None for a CPU device, or where the mapping is unknown (UUIDs in the variable).
    """
    if getattr(device, "type", str(device).split(":")[0]) != "cuda" or not nvml.available():
        return None
    index = getattr(device, "index", None) or 0
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and not all(p.strip().isdigit() for p in env.split(",") if p.strip()):
        return None
    visible = _visible_indices()
    return [visible[index]] if index < len(visible) else None


def announce_fallback_again() -> None:
    """Forget that the CPU fallback was announced: the next ``make_backend`` that falls back says so again."""
    _fallback_said["done"] = False


def make_backend(backend: str = "auto", devices: list[int] | None = None, *, pcie_interval_s: float = 1.0,
                 quiet: bool = False) -> NvmlBackend | CpuBackend:
    """``auto``: NVML when it works and sees a GPU, else the CPU backend (announced once per process)."""
    if backend not in ("auto", "nvml", "cpu"):
        raise ValueError(f"backend={backend!r}: use 'auto', 'nvml' or 'cpu'")
    if backend != "cpu":
        indices = devices if devices is not None else (_visible_indices() if nvml.available() else [])
        if nvml.available() and indices:
            return NvmlBackend(list(indices), pcie_interval_s=pcie_interval_s)
        why = nvml.reason() or "NVML sees no GPU to sample"
        if backend == "nvml":
            raise RuntimeError(f"NVML telemetry unavailable: {why}")
        if not _fallback_said["done"] and not quiet:
            _fallback_said["done"] = True
            show(f"telemetry: {why}; using the CPU backend (process CPU %, memory) instead of GPU metrics.")
    return CpuBackend()
