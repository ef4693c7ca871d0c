"""torch.compile measurement helpers: graph breaks found and removed, fusion correct, recompilation seen."""

from __future__ import annotations

import torch

from smml_lib.perf import compiling


def test_graph_breaks_are_counted_with_their_reason():
    def branchy(x):
        if x.sum().item() > 0:
            return x * 2
        return x - 1

    got = compiling.graph_breaks(branchy, torch.randn(64))
    assert got["graph_breaks"] >= 1 and any("item" in r for r in got["reasons"])
    clean = compiling.graph_breaks(lambda x: torch.where(x.sum() > 0, x * 2, x - 1), torch.randn(64))
    assert clean["graph_breaks"] == 0 and clean["graphs"] == 1


def test_compiled_chain_is_correct_and_timed():
    x = torch.randn(2**16)
    report = compiling.compile_and_compare(compiling.elementwise_chain, x, label="chain", iters=5)
    assert torch.allclose(torch.compile(compiling.elementwise_chain)(x), compiling.elementwise_chain(x), atol=1e-5)
    assert report.first_call_s > 0 and report.speedup > 0 and report.row()["label"] == "chain"


def test_recompilation_on_a_new_shape():
    df = compiling.recompile_demo(compiling.elementwise_chain, [256, 256, 512, 1024])
    flags = df["new_graph_compiled"].tolist()
    assert flags[:2] == [True, False] and not flags[3] and sum(flags) <= 2
