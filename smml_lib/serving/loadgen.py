"""A load generator for any OpenAI-compatible completion server: ours, vLLM, or a hosted API.

    smml loadtest --base-url http://127.0.0.1:8000/v1 --model tiny --concurrency 1,4,16 --requests 64

It plays ``concurrency`` users in a closed loop: each sends a request, waits for the whole answer, sends the
next. Per request it measures what a user feels, from the client side:

- **TTFT** (time to first token): send -> first streamed token (queueing + prefill);
- **TPOT** (time per output token): the rest of the answer divided by the tokens after the first (decode);
- **end-to-end latency**, and the HTTP status (200, 429 = the server's queue was full, ...).

Per concurrency level it reports throughput (output tokens/s and requests/s over the level's wall time) and
p50/p99 of each latency. Every level is bounded by a request count *and* a time limit, so a slow or stuck
server ends a sweep instead of hanging it.

Pointing it at vLLM on your own GPU: ``--base-url http://<host>:8000/v1 --model <the served model name>``.
An API key, if the server needs one, is read from the environment variable named by ``--api-key-env``
(default ``OPENAI_API_KEY``) and sent as a bearer token; it is never printed or stored in results.

Longer than ~300 lines because one request's measurement, a level's closed loop, the sweep, its summary and
the ``smml loadtest`` command are one tool that also runs on its own against servers that are not ours.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from smml_lib.common import plots
from smml_lib.common.credentials import redact
from smml_lib.common.display import show

SENTENCES = [
    "Explain why decoding one token at a time is limited by memory bandwidth",
    "Write a short note to a colleague about the cluster maintenance window",
    "Summarize the trade-offs between static and continuous batching",
    "List three ways to reduce the time to first token of a language model server",
    "Describe what happens inside a transformer layer during the prefill phase",
    "Give an example of a request that should be rejected with HTTP status 429",
    "Translate the phrase 'the queue is full' into French and German",
    "Compare the cost of an on-demand GPU instance with a spot instance",
]


def make_prompts(n: int, *, seed: int = 0) -> list[str]:
    """``n`` varied prompts (a request number in front, so no two share a long prefix)."""
    rng = random.Random(seed)
    return [f"Request {i}: {rng.choice(SENTENCES)}." for i in range(n)]


@dataclass
class RequestResult:
    """One request as the client saw it. Times in seconds; NaN where not measurable (e.g. TTFT of a 429)."""

    label: str
    concurrency: int
    index: int
    status: int  # HTTP status; 0 = no answer (connection error or client timeout)
    ok: bool
    stream: bool
    ttft_s: float
    tpot_s: float
    e2e_s: float
    prompt_tokens: int
    output_tokens: int
    start_s: float  # since the level started
    error: str = ""


@dataclass
class LoadSpec:
    """What to send: the model name, prompts, and the sampling fields of every request."""

    model: str
    prompts: list[str]
    max_tokens: int | tuple[int, int] = 32  # fixed, or (low, high): uniform per request
    temperature: float = 0.0
    stream: bool = True
    ignore_eos: bool = False  # vLLM's and our extension; OpenAI's own API rejects it
    extra_body: dict[str, Any] | None = None
    seed: int = 0

    def payload(self, i: int, rng: random.Random) -> dict[str, Any]:
        mt = self.max_tokens if isinstance(self.max_tokens, int) else rng.randint(*self.max_tokens)
        body: dict[str, Any] = {"model": self.model, "prompt": self.prompts[i % len(self.prompts)], "max_tokens": mt,
                                "temperature": self.temperature, "stream": self.stream}
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        if self.ignore_eos:
            body["ignore_eos"] = True
        return {**body, **(self.extra_body or {})}


def _api_key(api_key_env: str | None) -> str:
    return (os.environ.get(api_key_env) or "") if api_key_env else ""


def _error_text(body: bytes, secret: str = "") -> str:
    """The server's error message (OpenAI shape, else the raw body), with any secret masked."""
    try:
        text = str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        text = body.decode(errors="replace")
    text = text.replace(secret, "***") if len(secret) >= 4 else text
    return redact(text)[:200]


async def _send(client: Any, payload: dict[str, Any], secret: str = "") -> tuple[int, float, int, int, str]:
    """POST one completion; returns (status, ttft_s, prompt_tokens, output_tokens, error)."""
    from httpx_sse import aconnect_sse  # deferred: optional extra [serve]

    t0 = time.perf_counter()
    if not payload.get("stream"):
        r = await client.post("completions", json=payload)
        if r.status_code != 200:
            return r.status_code, float("nan"), 0, 0, _error_text(r.content, secret)
        usage = r.json().get("usage") or {}
        return 200, time.perf_counter() - t0, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), ""
    ttft, chunks, usage = float("nan"), 0, {}
    async with aconnect_sse(client, "POST", "completions", json=payload) as source:
        if source.response.status_code != 200:
            return source.response.status_code, ttft, 0, 0, _error_text(await source.response.aread(), secret)
        async for event in source.aiter_sse():
            if event.data.strip() == "[DONE]":
                break
            data = json.loads(event.data)
            if "error" in data:
                return 200, ttft, 0, chunks, "stream error: " + _error_text(event.data.encode(), secret)
            if data.get("choices"):
                chunks += 1
                if chunks == 1:
                    ttft = time.perf_counter() - t0
            usage = data.get("usage") or usage
    return 200, ttft, usage.get("prompt_tokens", 0), usage.get("completion_tokens", chunks), ""


async def run_level(base_url: str, spec: LoadSpec, *, concurrency: int, num_requests: int, time_limit_s: float,
                    label: str = "", request_timeout_s: float = 60.0, pause_after_429_s: float = 0.05,
                    api_key_env: str | None = "OPENAI_API_KEY", transport: Any = None) -> list[RequestResult]:
    """``concurrency`` closed-loop users send ``num_requests`` requests in all, none started after ``time_limit_s``.

    ``transport`` replaces the network (an ``httpx.MockTransport`` in tests).
    """
    import httpx  # deferred: optional extra [serve]

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(request_timeout_s, connect=5.0)
    results: list[RequestResult] = []
    counter = iter(range(num_requests))
    rng = random.Random(spec.seed)
    t_start = time.perf_counter()

    async def user(client: httpx.AsyncClient) -> None:
        for i in counter:
            if time.perf_counter() - t_start > time_limit_s:
                return
            payload = spec.payload(i, rng)
            t0 = time.perf_counter()
            try:
                status, ttft, p_tok, o_tok, err = await _send(client, payload, secret)
            except (httpx.HTTPError, ValueError) as exc:  # refused, reset, timed out, malformed stream
                status, ttft, p_tok, o_tok = 0, float("nan"), 0, 0
                err = _error_text(f"{type(exc).__name__}: {exc}".encode(), secret)
            e2e = time.perf_counter() - t0
            ok = status == 200 and not err
            if not payload.get("stream") and ok:
                ttft = float("nan")  # without streaming the first token is not observable
            tpot = (e2e - ttft) / (o_tok - 1) if ok and o_tok > 1 and ttft == ttft else float("nan")
            results.append(RequestResult(label, concurrency, i, status, ok, bool(payload.get("stream")), ttft, tpot,
                                         e2e, p_tok, o_tok, t0 - t_start, err))
            if status == 429 and pause_after_429_s:
                await asyncio.sleep(pause_after_429_s)

    secret = _api_key(api_key_env)
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    async with httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", limits=limits, timeout=timeout,
                                 headers=headers, transport=transport) as client:
        await asyncio.wait_for(asyncio.gather(*(user(client) for _ in range(concurrency))),
                               time_limit_s + request_timeout_s + 5.0)
    return results


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion, also from a notebook (whose event loop is already running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def sweep(base_url: str, model: str, concurrencies: list[int], *, requests_per_level: int | None = None,
          requests_per_user: int = 4, time_limit_s: float = 60.0, label: str = "", prompts: list[str] | None = None,
          max_tokens: int | tuple[int, int] = 32, temperature: float = 0.0, stream: bool = True,
          ignore_eos: bool = False, extra_body: dict[str, Any] | None = None, warmup_requests: int = 2,
          request_timeout_s: float = 60.0, api_key_env: str | None = "OPENAI_API_KEY", seed: int = 0) -> "Any":
    """Run one load level per concurrency; DataFrame with one row per request (``summarize`` condenses it).

    Each level sends ``requests_per_level`` requests (default ``requests_per_user x concurrency``) and starts no
    request after ``time_limit_s``. A few warm-up requests first pay one-off costs and are not recorded.
    """
    spec = LoadSpec(model, prompts or make_prompts(64, seed=seed), max_tokens, temperature, stream, ignore_eos,
                    extra_body, seed)
    kw = {"request_timeout_s": request_timeout_s, "api_key_env": api_key_env}
    if warmup_requests:
        run_sync(run_level(base_url, spec, concurrency=1, num_requests=warmup_requests, time_limit_s=time_limit_s,
                           **kw))
    rows: list[RequestResult] = []
    for c in concurrencies:
        n = requests_per_level or requests_per_user * c
        rows += run_sync(run_level(base_url, spec, concurrency=c, num_requests=n, time_limit_s=time_limit_s,
                                   label=label, **kw))
    return pd.DataFrame([asdict(r) for r in rows])


def sweep_external(base_url: str, model: str = "", concurrencies: list[int] | None = None, **kwargs: Any) -> "Any":
    """Sweep a server you run yourself (vLLM, TGI, a hosted API), or say how when ``base_url`` is empty.

    Checks ``GET {base_url}/models`` first (5 s timeout) and takes the first model when ``model`` is empty.
    Returns the per-request DataFrame, or None (with a message saying why) when there is nothing to measure.
    """
    import httpx  # deferred: optional extra [serve]

    if not base_url:
        show("No external server configured. To measure vLLM on your GPU: run `vllm serve meta-llama/Llama-3.2-1B "
             "--port 8001` in a terminal, then set vllm_base_url = 'http://127.0.0.1:8001/v1' in the parameters cell "
             "(or run `smml loadtest --base-url http://127.0.0.1:8001/v1 --model meta-llama/Llama-3.2-1B`).")
        return None
    key = _api_key(kwargs.get("api_key_env", "OPENAI_API_KEY"))
    try:
        r = httpx.get(base_url.rstrip("/") + "/models", timeout=5.0,
                      headers={"Authorization": f"Bearer {key}"} if key else {})
        r.raise_for_status()
        served = [m["id"] for m in r.json().get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        show(f"Cannot reach {base_url}/models ({_error_text(f'{type(exc).__name__}: {exc}'.encode(), key)}). "
             "Is the server running, and is the URL the /v1 base (e.g. http://127.0.0.1:8001/v1)?")
        return None
    if not model and not served:
        show(f"{base_url} lists no models; pass the model name explicitly.")
        return None
    return sweep(base_url, model or served[0], concurrencies or [1, 4, 16, 64], label=kwargs.pop("label", "external"),
                 **kwargs)


def summarize(requests: "Any", by: tuple[str, ...] = ("label", "concurrency")) -> "Any":
    """One row per (label, concurrency): counts, throughput and p50/p99 of TTFT, TPOT and end-to-end latency."""
    rows = []
    for key, g in requests.groupby(list(by), sort=False):
        ok = g[g["ok"]]
        wall = float((g["start_s"] + g["e2e_s"]).max() - g["start_s"].min()) if len(g) else float("nan")
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row.update(requests=len(g), ok=len(ok), rejected_429=int((g["status"] == 429).sum()),
                   errors=int((~g["ok"] & (g["status"] != 429)).sum()), wall_s=wall,
                   output_tokens=int(ok["output_tokens"].sum()), tokens_per_s=ok["output_tokens"].sum() / wall,
                   requests_per_s=len(ok) / wall)
        for col in ("ttft_s", "tpot_s", "e2e_s"):
            vals = ok[col].dropna().to_numpy()
            for q in (50, 99):
                row[f"{col[:-2]}_p{q}_s"] = float(np.percentile(vals, q)) if len(vals) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def plot_sweep(summary: "Any", *, hue: str = "label", name: str | None = "loadtest", title: str | None = None) -> Any:
    """Throughput, TTFT (p50 and p99), TPOT and end-to-end p99 against concurrency, one line per ``hue``."""
    df = summary.copy()
    for col in [c for c in df.columns if c.endswith("_s") and c.split("_")[0] in ("ttft", "tpot", "e2e")]:
        df[col.replace("_s", "_ms")] = 1e3 * df[col]
    fig, ax = plots.figure(2, 2, size=(11, 7), title=title or "Latency and throughput under load")
    h = hue if hue in df.columns and df[hue].nunique() > 1 else None
    plots.line(df, "concurrency", "tokens_per_s", hue=h, ax=ax[0, 0], ylabel="output tokens/s", logx=True)
    plots.line(df, "concurrency", "ttft_p99_ms", hue=h, ax=ax[0, 1], ylabel="TTFT p99 (ms)", logx=True)
    plots.line(df, "concurrency", "tpot_p50_ms", hue=h, ax=ax[1, 0], ylabel="TPOT p50 (ms)", logx=True)
    plots.line(df, "concurrency", "e2e_p99_ms", hue=h, ax=ax[1, 1], ylabel="end-to-end p99 (ms)", logx=True)
    return plots.finish(fig, name)


def cli(argv: list[str]) -> int:
    """``smml loadtest``: a concurrency sweep against an OpenAI-compatible server; prints the summary table."""
    p = argparse.ArgumentParser(prog="smml loadtest", description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the server's /v1 URL")
    p.add_argument("--model", default="tiny", help="model name as the server knows it (GET /v1/models)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated users per level (default: 1,4,16)")
    p.add_argument("--requests", type=int, default=None, help="requests per level (default: 4 x concurrency)")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per level; no request starts later")
    p.add_argument("--max-tokens", default="32", help="tokens per answer: N, or LOW-HIGH for a uniform spread")
    p.add_argument("--no-stream", action="store_true", help="plain JSON answers (TTFT is then not measured)")
    p.add_argument("--ignore-eos", action="store_true", help="ask for exactly max_tokens (vLLM and smml serve)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--csv", default=None, help="also write the per-request table to this CSV file")
    args = p.parse_args(argv)
    lo, _, hi = args.max_tokens.partition("-")
    max_tokens: int | tuple[int, int] = (int(lo), int(hi)) if hi else int(lo)
    import httpx  # deferred: optional extra [serve]

    try:
        df = sweep(args.base_url, args.model, [int(c) for c in args.concurrency.split(",")],
                   requests_per_level=args.requests, time_limit_s=args.time_limit, max_tokens=max_tokens,
                   stream=not args.no_stream, ignore_eos=args.ignore_eos, api_key_env=args.api_key_env)
    except (httpx.HTTPError, asyncio.TimeoutError) as exc:
        print(f"smml loadtest: cannot load-test {args.base_url}: {type(exc).__name__}: {exc}. Is the server up "
              "(curl <base-url>/models)?")
        return 2
    if args.csv:
        df.to_csv(args.csv, index=False)
    summary = summarize(df)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    failed = df[~df["ok"]]
    if len(failed):
        print(f"{len(failed)} requests failed; most common: {failed['error'].value_counts().index[0]!r} "
              f"(status {int(failed['status'].mode()[0])})")
    return 0 if summary["ok"].sum() > 0 else 1
