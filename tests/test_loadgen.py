"""The load generator: metrics arithmetic, SSE parsing, API-key handling, bounds, and a sweep against our server.

Most tests replace the network with ``httpx.MockTransport`` (no sockets); the sweep test talks to an
in-process server on 127.0.0.1.

    .venv/bin/pytest tests/test_loadgen.py -q
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from smml_lib.serving import loadgen

KEY = "sk-smml-test-0123456789"


def _sse_body(n_tokens: int, usage: bool = True) -> bytes:
    chunks = [{"object": "text_completion", "choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}
              for i in range(n_tokens)]
    if usage:
        chunks.append({"object": "text_completion", "choices": [],
                       "usage": {"prompt_tokens": 5, "completion_tokens": n_tokens, "total_tokens": 5 + n_tokens}})
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def _run(transport, **kw):
    spec = loadgen.LoadSpec("m", ["p"], max_tokens=kw.pop("max_tokens", 8), stream=kw.pop("stream", True))
    return loadgen.run_sync(loadgen.run_level("http://mock/v1", spec, transport=transport,
                                              **{"concurrency": 2, "num_requests": 4, "time_limit_s": 10, **kw}))


def test_summarize_matches_a_hand_computed_case():
    rows = [loadgen.RequestResult("a", 2, 0, 200, True, True, 0.1, 0.01, 1.0, 5, 10, 0.0),
            loadgen.RequestResult("a", 2, 1, 200, True, True, 0.2, 0.02, 2.0, 5, 20, 0.0),
            loadgen.RequestResult("a", 2, 2, 200, True, True, 0.3, 0.03, 1.0, 5, 10, 1.0),
            loadgen.RequestResult("a", 2, 3, 429, False, True, float("nan"), float("nan"), 0.01, 0, 0, 1.0, "busy")]
    s = loadgen.summarize(pd.DataFrame([r.__dict__ for r in rows])).iloc[0]
    assert (s["requests"], s["ok"], s["rejected_429"], s["errors"]) == (4, 3, 1, 0)
    assert s["wall_s"] == pytest.approx(2.0)  # first start 0 s, last end 0 + 2 s
    assert s["tokens_per_s"] == pytest.approx(40 / 2.0) and s["requests_per_s"] == pytest.approx(3 / 2.0)
    assert s["ttft_p50_s"] == pytest.approx(0.2)
    assert s["ttft_p99_s"] == pytest.approx(np.percentile([0.1, 0.2, 0.3], 99))
    assert s["e2e_p50_s"] == pytest.approx(1.0)


def test_stream_is_parsed_and_the_api_key_is_sent_but_never_recorded(monkeypatch):
    monkeypatch.setenv("SMML_TEST_KEY", KEY)
    seen = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers.get("authorization"), json.loads(request.content)))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_sse_body(6))

    results = _run(httpx.MockTransport(handler), api_key_env="SMML_TEST_KEY")
    assert len(results) == 4 and all(r.ok and r.status == 200 for r in results)
    assert all(auth == f"Bearer {KEY}" for auth, _ in seen)
    body = seen[0][1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True} and body["temperature"] == 0
    assert all(r.output_tokens == 6 and r.prompt_tokens == 5 and r.ttft_s >= 0 and r.tpot_s >= 0 for r in results)
    assert KEY not in pd.DataFrame([r.__dict__ for r in results]).to_csv()


def test_error_answers_are_recorded_with_the_key_masked(monkeypatch):
    monkeypatch.setenv("SMML_TEST_KEY", KEY)

    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["prompt"] == "p":
            return httpx.Response(401, json={"error": {"message": f"invalid key {KEY}"}})
        return httpx.Response(200)

    results = _run(httpx.MockTransport(handler), api_key_env="SMML_TEST_KEY")
    assert all(r.status == 401 and not r.ok for r in results)
    assert all(r.error == "invalid key ***" for r in results)


def test_without_usage_tokens_are_counted_from_chunks_and_non_streaming_has_no_ttft():
    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["stream"]:
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=_sse_body(5, usage=False))
        return httpx.Response(200, json={"choices": [{"text": "x"}], "usage": {"prompt_tokens": 2,
                                                                               "completion_tokens": 9}})

    streamed = _run(httpx.MockTransport(handler))
    assert all(r.output_tokens == 5 for r in streamed)
    plain = _run(httpx.MockTransport(handler), stream=False)
    assert all(r.ok and r.output_tokens == 9 and np.isnan(r.ttft_s) and np.isnan(r.tpot_s) for r in plain)


def test_a_level_stops_at_its_time_limit():
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_sse_body(2))

    t0 = time.perf_counter()
    results = _run(httpx.MockTransport(slow), num_requests=100_000, time_limit_s=0.3, concurrency=4)
    assert time.perf_counter() - t0 < 3.0
    # ~4 users x 0.3 s / 0.05 s = 24 requests when idle; on a loaded CI machine a user can reach the limit
    # before its first request starts, so only "some, and far fewer than asked" is certain
    assert 1 <= len(results) < 200


def test_unreachable_server_gives_errors_not_a_hang():
    spec = loadgen.LoadSpec("m", ["p"], max_tokens=4)
    t0 = time.perf_counter()
    results = loadgen.run_sync(loadgen.run_level("http://127.0.0.1:9/v1", spec, concurrency=2, num_requests=4,
                                                 time_limit_s=5))
    assert time.perf_counter() - t0 < 5
    assert len(results) == 4 and all(r.status == 0 and "Connect" in r.error for r in results)


def test_max_tokens_range_is_drawn_per_request():
    import random

    spec = loadgen.LoadSpec("m", loadgen.make_prompts(4), max_tokens=(4, 9), ignore_eos=True)
    rng = random.Random(0)
    drawn = [spec.payload(i, rng)["max_tokens"] for i in range(200)]
    assert min(drawn) == 4 and max(drawn) == 9
    assert spec.payload(0, rng)["ignore_eos"] is True


def test_sweep_summary_plot_and_cli_against_our_server(capsys):
    import torch

    from smml_lib.serving.process import start_server

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the in-process server shares this process; restored below

    with start_server("tiny", in_process=True, scheduler="continuous", max_batch=4) as s:
        df = loadgen.sweep(s.base_url, "tiny", [1, 4], requests_per_user=1, max_tokens=4, ignore_eos=True,
                           label="continuous", time_limit_s=30, warmup_requests=1)
        assert loadgen.cli(["--base-url", s.base_url, "--model", "tiny", "--concurrency", "2", "--requests", "2",
                            "--max-tokens", "3-5", "--ignore-eos"]) == 0
    torch.set_num_threads(threads)
    summary = loadgen.summarize(df)
    assert list(summary["concurrency"]) == [1, 4] and list(summary["requests"]) == [1, 4]
    assert (summary["ok"] == summary["requests"]).all() and (summary["tokens_per_s"] > 0).all()
    assert (df["output_tokens"] == 4).all() and (df["ttft_s"] > 0).all()
    path = loadgen.plot_sweep(summary, name="test_loadgen_sweep")
    assert path is not None and path.exists()
    out = capsys.readouterr().out
    assert "tokens_per_s" in out and "ttft_p99_s" in out
