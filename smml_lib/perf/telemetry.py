"""GPU telemetry while a cell works: a background sampler you wrap around any code.

::

    with telemetry.Sampler(interval_s=0.1) as tel:      # 10 samples per second, in a background thread
        with tel.phase("prefill"):
            ...
        with tel.phase("decode"):
            ...
    tel.summary()        # per GPU: mean/max of each metric, energy in joules, share of time throttled
    tel.plot(name="m01_generation_telemetry")

**What is read (NVML, the library behind nvidia-smi), per GPU and sample:** utilization (% of the last
sample period in which *any* kernel ran, not how busy the SMs were: one tiny kernel reads as 100%),
memory used, power (a 1-s average on Ampere and newer), temperature, SM and memory clocks, the
throttle-reason bitmask decoded to names, PCIe tx/rx (read once per ``pcie_interval_s``: each read
samples the bus for 20 ms), and energy from the driver's total-energy counter (mJ since the driver
loaded). Energy is the difference of two counter readings: more exact than adding up power samples.

**Without NVML** (no NVIDIA driver, e.g. smoke mode on a laptop or CI) the sampler falls back to the
CPU backend (process CPU %, resident memory) and says so once per process (the backends are in
``smml_lib.perf.telemetry_backends``). Telemetry never stops a
lab: a failing reading becomes a missing value, an error in the thread is kept in ``errors``.

The sampler measures its own cost: ``overhead()`` returns the CPU time its thread used per second
of wall time (target: under 1% of one core at 10 Hz; ``smml bench telemetry_overhead`` checks it).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pandas as pd

from smml_lib.common import plots
from smml_lib.perf.telemetry_backends import CPU_METRICS, GPU_METRICS, make_backend, nvml_indices_of


class Sampler:
    """Background telemetry sampler; use as a context manager (or ``start()``/``stop()``).

    Args:
        interval_s: time between samples (0.1 s = 10 Hz; NVML's own counters update every 1/6-1 s).
        devices: NVML indices to sample (default: every visible GPU, or ``device``'s).
        device: a torch device (``cuda:k``) whose GPU alone is sampled: a one-GPU lab on a 4-GPU machine
            then pays for one GPU's readings, not four.
        backend: ``auto`` | ``nvml`` | ``cpu``.
        pcie_interval_s: how often PCIe throughput is read (each read blocks ~20 ms in the driver).
    """

    def __init__(self, interval_s: float = 0.1, *, devices: list[int] | None = None, device: Any = None,
                 backend: str = "auto", pcie_interval_s: float = 1.0, label: str = ""):
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s, self.label = interval_s, label
        if devices is None and device is not None:
            devices = nvml_indices_of(device)
        self.backend = make_backend(backend, devices, pcie_interval_s=pcie_interval_s)
        self.rows: list[dict[str, Any]] = []
        self.phases: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stack: list[str] = []
        self._stop = threading.Event()
        self._lock, self._read_lock = threading.Lock(), threading.Lock()
        self._thread: threading.Thread | None = None
        self._t0 = self._t_end = 0.0
        self._thread_cpu_s = 0.0
        self._energy0: dict[int, float | None] = {}

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def _sample(self) -> None:
        try:
            with self._read_lock:  # the sampler thread and a phase's closing reading share one backend
                rows = self.backend.read()
        except Exception as exc:  # never let telemetry break the work it watches
            if len(self.errors) < 20:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        t, phase = time.perf_counter() - self._t0, (self._stack[-1] if self._stack else "")
        with self._lock:
            for r in rows:
                self.rows.append({"t_s": t, "phase": phase, **r})

    def _run(self) -> None:
        next_t = time.perf_counter()
        try:
            while not self._stop.is_set():
                self._sample()
                next_t += self.interval_s
                delay = next_t - time.perf_counter()
                if delay < 0:  # fell behind (a slow reading): skip ahead instead of bursting
                    next_t, delay = time.perf_counter(), 0.0
                self._stop.wait(delay)
        finally:
            self._thread_cpu_s = time.thread_time()  # CPU time this thread used (its own clock)

    def start(self) -> "Sampler":
        if self._thread is not None:
            raise RuntimeError("this Sampler is already running (use a new one per measurement)")
        self._t0 = time.perf_counter()
        self._energy0 = self._energy()
        self._thread = threading.Thread(target=self._run, name="smml-telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> "Sampler":
        if self._thread is None or self._stop.is_set():
            return self
        self._stop.set()
        self._thread.join(timeout=max(2.0, 5 * self.interval_s))
        self._t_end = time.perf_counter() - self._t0
        self._sample()  # one last reading at the very end
        return self

    def __enter__(self) -> "Sampler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _energy(self) -> dict[int, float | None]:
        try:
            return self.backend.energy_mj()
        except Exception:
            return {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark a phase of the work: samples taken inside carry its name (at least the one taken as it ends);
        its energy is read at both ends."""
        start, e0 = time.perf_counter() - self._t0, self._energy()
        self._stack.append(name)
        try:
            yield
        finally:
            if self._thread is not None and not self._stop.is_set():
                self._sample()  # a closing reading: a phase shorter than the interval still has one sample
            self._stack.pop()
            e1 = self._energy()
            joules = [(e1[i] - e0[i]) / 1e3 for i in e1 if e1.get(i) is not None and e0.get(i) is not None]
            self.phases.append({"phase": name, "start_s": start, "end_s": time.perf_counter() - self._t0,
                                "energy_j": sum(joules) if joules else None})

    @property
    def frame(self) -> "Any":
        """All samples: one row per sample and GPU; ``energy_j`` counts from the sampler's start."""
        with self._lock:
            df = pd.DataFrame(self.rows)
        if df.empty:
            return df
        if "energy_mj" in df:
            e0 = df["gpu"].map(lambda i: self._energy0.get(i))
            used_mj = pd.to_numeric(df["energy_mj"], errors="coerce") - pd.to_numeric(e0, errors="coerce")
            df["energy_j"] = used_mj / 1e3
            df = df.drop(columns=["energy_mj"])
        return df

    def phases_frame(self) -> "Any":
        df = pd.DataFrame(self.phases, columns=["phase", "start_s", "end_s", "energy_j"])
        df["duration_s"] = df["end_s"] - df["start_s"]
        return df

    def summary(self, by_phase: bool = False) -> "Any":
        """Per GPU (and phase): samples, duration, mean and max of each metric, energy (J), throttled share."""
        df = self.frame
        if df.empty:
            return pd.DataFrame()
        metrics = [m for m in (GPU_METRICS if self.backend.name == "nvml" else CPU_METRICS) if m in df]
        keys = ["gpu", "phase"] if by_phase else ["gpu"]
        out = []
        for key, part in df.groupby(keys, dropna=False, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            row: dict[str, Any] = {k: (v if v != "" else "(no phase)") for k, v in zip(keys, key)}
            row.update(backend=self.backend.name, samples=len(part),
                       duration_s=float(part["t_s"].max() - part["t_s"].min()) if len(part) > 1 else 0.0)
            for m in metrics:
                col = pd.to_numeric(part[m], errors="coerce")
                row[f"{m}_mean"], row[f"{m}_max"] = col.mean(), col.max()
            if "energy_j" in part:
                e = pd.to_numeric(part["energy_j"], errors="coerce").dropna()
                row["energy_j"] = float(e.max() - (0.0 if not by_phase else e.min())) if len(e) else None
            if "throttled" in part:
                row["throttled_share"] = float(part["throttled"].astype(bool).mean())
                reasons = sorted({r for s in part["throttle_reasons"].dropna() for r in s.split(",") if r})
                row["throttle_reasons_seen"] = ",".join(reasons)
            out.append(row)
        return pd.DataFrame(out)

    def overhead(self) -> dict[str, float]:
        """CPU time used by the sampler thread, as % of one core over the sampling wall time."""
        wall = self._t_end or (time.perf_counter() - self._t0)
        n = len({r["t_s"] for r in self.rows})
        return {"samples": n, "wall_s": wall, "thread_cpu_s": self._thread_cpu_s,
                "cpu_pct_of_one_core": 100 * self._thread_cpu_s / wall if wall > 0 else float("nan"),
                "cpu_ms_per_sample": 1e3 * self._thread_cpu_s / n if n else float("nan")}

    def plot(self, metrics: list[str] | None = None, *, name: str | None = None, title: str | None = None) -> Any:
        """Timeline of the samples with the phases shaded (see ``plot_timeline``)."""
        label = f" · {self.label}" if self.label else ""
        return plot_timeline(self.frame, self.phases_frame(), metrics=metrics, name=name,
                             title=title or f"Telemetry ({self.backend.name} backend){label}")


_LABELS = {"util_gpu_pct": "GPU util (%)", "power_w": "power (W)", "sm_clock_mhz": "SM clock (MHz)",
           "mem_used_gb": "memory used (GB)", "temp_c": "temperature (°C)", "cpu_percent": "process CPU (%)",
           "rss_gb": "resident memory (GB)", "system_cpu_percent": "system CPU (%)", "pcie_rx_mbps": "PCIe rx (MB/s)",
           "pcie_tx_mbps": "PCIe tx (MB/s)", "util_mem_pct": "memory util (%)", "mem_clock_mhz": "mem clock (MHz)"}


def plot_timeline(samples: Any, phases: Any = None, *, metrics: list[str] | None = None, name: str | None = None,
                  title: str = "Telemetry") -> Any:
    """Stacked time series (one panel per metric, one line per GPU) with each phase shaded and named.

    Samples where power or heat held the clocks down are marked with red ticks on the SM-clock panel.
    """
    if samples is None or len(samples) == 0:
        return None
    default = ["util_gpu_pct", "power_w", "sm_clock_mhz", "mem_used_gb"] if "util_gpu_pct" in samples else [
        "cpu_percent", "rss_gb"]
    metrics = [m for m in (metrics or default)
               if m in samples and pd.to_numeric(samples[m], errors="coerce").notna().any()]
    if not metrics:
        return None
    fig, axes = plots.figure(len(metrics), 1, size=(8, 1.9 * len(metrics) + 0.6), title=title)
    axes = list(axes) if len(metrics) > 1 else [axes]
    groups = list(samples.groupby("gpu", dropna=False, sort=True))
    colours = ["#dbe9f6", "#fde8cf", "#e3f3df", "#f1e0f3", "#f7f3d4"]
    for ax, m in zip(axes, metrics):
        for gpu, part in groups:
            vals = pd.to_numeric(part[m], errors="coerce")
            ax.plot(part["t_s"][vals.notna()], vals.dropna(), linewidth=1.2,
                    label=f"GPU {int(gpu)}" if pd.notna(gpu) else None)
            if m == "sm_clock_mhz" and "throttled" in part and part["throttled"].any():
                hit = part[part["throttled"].astype(bool)]
                ax.plot(hit["t_s"], pd.to_numeric(hit[m], errors="coerce"), "|", color="red", label="throttled")
        ax.set_ylabel(_LABELS.get(m, m), fontsize=8)
        ax.set_ylim(bottom=0)  # every metric here is a non-negative amount: keep small wiggles small
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        if phases is not None:
            for j, ph in enumerate(phases.itertuples()):
                ax.axvspan(ph.start_s, ph.end_s, color=colours[j % len(colours)], alpha=0.8, zorder=0)
                if ax is axes[0]:
                    ax.annotate(ph.phase, (ph.start_s, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                                va="bottom", xytext=(2, 1), textcoords="offset points")
    axes[-1].set_xlabel("time (s)")
    if len(groups) > 1 or any("throttled" in (h.get_label() or "") for h in axes[0].lines):
        axes[0].legend(fontsize=7)
    plots.finish(fig, name)
    return axes
