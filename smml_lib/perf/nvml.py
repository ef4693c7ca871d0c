"""A thin, safe wrapper around NVIDIA's management library (NVML, module ``pynvml`` from nvidia-ml-py).

NVML is how ``nvidia-smi`` reads a GPU: driver version, clocks, power, energy, temperature,
throttle reasons. On a machine without the NVIDIA driver ``nvmlInit()`` raises
``NVMLError_LibraryNotFound``; everything here turns that into ``None`` plus a reason, so a lab on a
CPU-only machine never crashes on telemetry.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_state: dict[str, Any] = {"tried": False, "module": None, "reason": ""}


def nvml() -> Any | None:
    """Return the initialised ``pynvml`` module, or ``None`` when NVML cannot be used (see ``reason()``)."""
    if not _state["tried"]:
        _state["tried"] = True
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            _state["module"] = pynvml
        except ImportError:
            _state["reason"] = "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, NoPermission, ...
            name = type(exc).__name__
            if "LibraryNotFound" in name:
                _state["reason"] = "no NVIDIA driver on this machine (libnvidia-ml.so.1 not found)"
            elif "DriverNotLoaded" in name:
                _state["reason"] = "the NVIDIA driver is installed but not loaded (reboot, or check dmesg)"
            else:
                _state["reason"] = f"NVML failed to start: {name}: {exc}"
    return _state["module"]


def reason() -> str:
    """Why NVML is unavailable ('' when it is available)."""
    nvml()
    return _state["reason"]


def available() -> bool:
    return nvml() is not None


def safe(fn: Callable[..., T], *args: Any, default: T | None = None) -> T | None:
    """Call an NVML function, returning ``default`` on ``NVMLError`` (NotSupported, FunctionNotFound, ...)."""
    try:
        return fn(*args)
    except Exception:
        return default


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@functools.lru_cache(maxsize=1)
def driver_version() -> str | None:
    mod = nvml()
    if mod is None:
        return None
    return _decode(safe(mod.nvmlSystemGetDriverVersion, default="unknown"))


def device_count() -> int:
    mod = nvml()
    return int(safe(mod.nvmlDeviceGetCount, default=0) or 0) if mod else 0


def handle(index: int) -> Any | None:
    mod = nvml()
    return safe(mod.nvmlDeviceGetHandleByIndex, index) if mod else None


def clocks_mhz(index: int) -> dict[str, int | None]:
    """Current and maximum SM / memory clocks of GPU ``index`` in MHz (``None`` where unsupported)."""
    mod, h = nvml(), handle(index)
    if mod is None or h is None:
        return {}
    return {
        "sm_clock_mhz": safe(mod.nvmlDeviceGetClockInfo, h, mod.NVML_CLOCK_SM),
        "mem_clock_mhz": safe(mod.nvmlDeviceGetClockInfo, h, mod.NVML_CLOCK_MEM),
        "sm_clock_max_mhz": safe(mod.nvmlDeviceGetMaxClockInfo, h, mod.NVML_CLOCK_SM),
        "mem_clock_max_mhz": safe(mod.nvmlDeviceGetMaxClockInfo, h, mod.NVML_CLOCK_MEM),
    }


def reset_for_tests() -> None:
    """Forget the cached initialisation (tests swap in a fake ``pynvml``)."""
    _state.update(tried=False, module=None, reason="")
    driver_version.cache_clear()
