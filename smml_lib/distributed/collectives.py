"""The cost model of collectives, and the summary of a measured sweep.

Sizes follow nccl-tests: all-reduce counts the buffer, all-gather the gathered output (``n`` x the per-rank
input), reduce-scatter the input (``n`` x the per-rank output).

- **algorithm bandwidth** ``algbw = size / time``: what the caller sees.
- **bus bandwidth** ``busbw = algbw x factor``: the rate each link actually carried. A ring all-reduce
  sends and receives ``2 (n-1)/n`` of the buffer per rank; all-gather and reduce-scatter ``(n-1)/n``.
  busbw is comparable across GPU counts and with the hardware's link speed (PCIe Gen4 x16: about
  25 GB/s achievable of 31.5 per direction; NVLink4: hundreds).

``smml_lib.distributed.workers.collectives`` measures; ``summarize`` turns its per-rank rows into one row
per (operation, size), and ``busbw_at`` / ``collective_time_s`` predict other sizes from that.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

OPS = ("all_reduce", "all_gather", "reduce_scatter")
SIZE_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30}


def bus_factor(op: str, world_size: int) -> float:
    """nccl-tests' busbw / algbw: 2(n-1)/n for all-reduce, (n-1)/n for all-gather and reduce-scatter."""
    n = world_size
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter"):
        return (n - 1) / n
    raise ValueError(f"unknown collective {op!r}; known: {', '.join(OPS)}")


def collective_time_s(op: str, size_bytes: float, world_size: int, busbw_gbps: float) -> float:
    """Predicted time of one collective of ``size_bytes`` (nccl-tests size) at bus bandwidth ``busbw_gbps``."""
    if world_size < 2:
        return 0.0
    return size_bytes * bus_factor(op, world_size) / (busbw_gbps * 1e9)


def parse_size(text: str) -> int:
    """``"32K"`` -> 32768, ``"1G"`` -> 2**30, ``"1000"`` -> 1000 (binary units, as nccl-tests)."""
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in SIZE_UNITS:
        return int(float(text[:-1]) * SIZE_UNITS[text[-1]])
    return int(text)


def message_sizes(min_bytes: int, max_bytes: int, factor: int = 4) -> list[int]:
    """Geometric sizes from ``min_bytes`` to ``max_bytes`` (both included)."""
    sizes, s = [], min_bytes
    while s < max_bytes:
        sizes.append(s)
        s *= factor
    return sizes + [max_bytes]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per (op, size): the slowest rank's median time, then algbw and busbw in GB/s (1e9 bytes/s)."""
    keys = ["op", "size_bytes", "world_size", "num_nodes", "backend", "dtype", "device_name"]
    keys = [k for k in keys if k in df.columns]
    out = df.groupby(keys, as_index=False).agg(time_s=("time_s", "max"), spread=("spread", "max"))
    out["algbw_gbps"] = out["size_bytes"] / out["time_s"] / 1e9
    out["busbw_gbps"] = out["algbw_gbps"] * [bus_factor(o, n) for o, n in zip(out["op"], out["world_size"])]
    return out.sort_values(["op", "size_bytes"]).reset_index(drop=True)


def busbw_at(summary: pd.DataFrame, op: str, size_bytes: float) -> float:
    """Bus bandwidth of ``op`` at ``size_bytes``, interpolated (log-size) between measured sizes."""
    part = summary[summary["op"] == op].sort_values("size_bytes")
    if part.empty:
        raise ValueError(f"no measurements of {op!r}")
    return float(np.interp(np.log(size_bytes), np.log(part["size_bytes"]), part["busbw_gbps"]))
