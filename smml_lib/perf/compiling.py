"""What "compiling" a PyTorch model means, measured: first-call cost, steady-state speed, graph breaks.

In eager mode PyTorch runs your Python line by line and launches one kernel per operation: every
intermediate result makes a round trip through memory. ``torch.compile`` instead

1. **captures** the Python into a graph of tensor operations (TorchDynamo, by watching the bytecode run),
2. **lowers** the graph and **fuses** chains of cheap operations into one kernel (TorchInductor: Triton
   kernels on a GPU, C++/OpenMP on a CPU), so intermediates stay in registers and caches,
3. caches the result and **guards** it: a call with a new shape or dtype recompiles.

The first call pays for all of that (seconds to minutes); later calls are cheaper. Code that Dynamo
cannot capture (data-dependent Python control flow, ``print``, ``.item()``) causes a **graph break**:
the function is split into several graphs with eager Python in between, and fusion stops at each break.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd
import torch
from torch._dynamo.utils import counters

from smml_lib.perf.timing import Timing, benchmark, stopwatch


@dataclass
class CompileReport:
    """Eager vs compiled timing of one function on fixed inputs."""

    label: str
    first_call_s: float  # compile + first run of the compiled function
    eager: Timing
    compiled: Timing

    @property
    def speedup(self) -> float:
        return self.eager.median_s / self.compiled.median_s

    @property
    def break_even_calls(self) -> float:
        """Calls after which the compile cost is paid back by the faster steady state."""
        saved = self.eager.median_s - self.compiled.median_s
        return self.first_call_s / saved if saved > 0 else float("inf")

    def row(self) -> dict[str, Any]:
        return {"label": self.label, "first_call_s": self.first_call_s, "eager_median_s": self.eager.median_s,
                "compiled_median_s": self.compiled.median_s, "speedup": self.speedup,
                "break_even_calls": self.break_even_calls, "eager_spread": self.eager.spread,
                "compiled_spread": self.compiled.spread}


def compile_and_compare(fn: Callable[..., Any], *args: Any, label: str = "", device: Any = None,
                        compile_kwargs: dict[str, Any] | None = None, iters: int | None = None) -> CompileReport:
    """Time ``fn`` eagerly, then ``torch.compile(fn)``: its first call (the compile cost) and its steady state."""
    compiled = torch.compile(fn, **(compile_kwargs or {}))
    eager_t = benchmark(fn, *args, iters=iters, device=device, label=f"{label} eager")
    with stopwatch(device) as sw:
        compiled(*args)
    comp_t = benchmark(compiled, *args, iters=iters, device=device, label=f"{label} compiled")
    return CompileReport(label or getattr(fn, "__name__", "fn"), sw.elapsed_s, eager_t, comp_t)


def graph_breaks(fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """How TorchDynamo splits ``fn``: number of graphs, of breaks, and the reason for each break."""
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args)
    reasons = []
    for br in explanation.break_reasons:
        where = ""
        if getattr(br, "user_stack", None):
            frame = br.user_stack[-1]
            where = f" (line {frame.lineno}: {frame.line.strip() if frame.line else ''})"
        reasons.append(str(br.reason).splitlines()[0][:160] + where)
    return {"graphs": explanation.graph_count, "graph_breaks": explanation.graph_break_count,
            "ops_captured": explanation.op_count, "reasons": reasons}


def inductor_cache_stats() -> dict[str, int]:
    """Inductor's on-disk FX-graph cache hits/misses so far in this process (a warm cache compiles faster)."""
    try:
        from torch._dynamo.utils import counters  # deferred: optional

        return {"fxgraph_cache_hit": int(counters["inductor"]["fxgraph_cache_hit"]),
                "fxgraph_cache_miss": int(counters["inductor"]["fxgraph_cache_miss"])}
    except Exception:
        return {}


def reset() -> None:
    """Forget every compiled graph in this process (the next compiled call compiles again)."""
    torch._dynamo.reset()


# A memory-bound chain of 7 elementwise operations, for the fusion demo. In eager mode each operation is
# its own kernel that reads its inputs from memory and writes its output back: 9 tensor reads + 7 writes =
# 16 passes over memory. Fused into one kernel: read x once, write the result once = 2 passes.
CHAIN_EAGER_PASSES = 16
CHAIN_FUSED_PASSES = 2


def elementwise_chain(x: "Any") -> "Any":
    """gelu(1.5x + 0.5) * sigmoid(x) - x/3, written as 7 separate elementwise operations."""
    a = x * 1.5
    b = a + 0.5
    c = torch.nn.functional.gelu(b)
    d = torch.sigmoid(x)
    return c * d - x / 3


def recompile_demo(fn: Callable[..., Any], sizes: list[int], device: Any = None) -> "Any":
    """Call ``torch.compile(fn)`` on 1-D inputs of several sizes; time each call and count compiled graphs.

    The first size compiles a graph specialised to that shape; calling it again is fast. A new size fails
    the shape guard and recompiles, this time with a *dynamic* size, so a third size reuses that graph.
    """
    torch._dynamo.reset()
    compiled = torch.compile(fn)
    rows = []
    for i, n in enumerate(sizes):
        x = torch.randn(n, device=device)
        before = counters["stats"]["unique_graphs"]
        with stopwatch(device) as sw:
            compiled(x)
        rows.append({"call": i + 1, "size": n, "time_s": sw.elapsed_s,
                     "new_graph_compiled": counters["stats"]["unique_graphs"] > before})
    return pd.DataFrame(rows)
