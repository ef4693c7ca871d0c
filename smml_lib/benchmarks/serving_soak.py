"""Soak: 1,000 OpenAI-client requests without loss, a 10 MB body that stalls no one, SIGTERM under load.

Targets (issues 5 and 13), each against a real server subprocess on 127.0.0.1 (tiny model by default):

1. **Soak.** 1,000 requests through ``openai.AsyncOpenAI`` at concurrency 32: half chat, half completions, a
   third streaming, 4-32 tokens each. The server (continuous batching, 16 slots, a queue of 12) is overloaded
   on purpose, so some requests get 429 (an OpenAI-shaped error; the user waits 0.5 s and goes on). Targets:
   0 lost (every request ends in an answer or an OpenAI-shaped error), 0 errors of any other shape, and the
   server's resident memory (RSS) grows by less than 5% from after the warm-up to the end.
2. **Stall.** One client streams a long answer while another process sends 10 MB bodies (4 a second; and,
   for context, back to back, which saturates a core of a small machine by itself). The
   stream's largest gap between two tokens must stay under 2x the largest gap of the same stream alone
   (median over a few alternating runs: one busy moment of a shared machine is not the server's doing).
   The control: the same back-to-back sender aimed at a 20-line sink that is not our server (it answers
   413 after the headers and closes, as ours does). If the stream slows as much then, the machine is the
   cause. (The control found the server's part: a 413 kept the connection alive, and uvicorn parsed the
   unread 10 MB on the event loop; paced 2.93x, back to back 4.70x, sink 1.48x. With ``Connection:
   close``: 1.00x, 1.96x and 1.33x on the 2-core CPU machine, 2026-12-07.)
3. **SIGTERM under load.** 16 running and 24 waiting requests (half streaming), then SIGTERM: every client
   gets a complete answer or an OpenAI-shaped error; 0 plain-text 500s, 0 streams cut without ``[DONE]``, no
   traceback in the log, exit within the drain timeout + 2 s.

Continuous batching's throughput has its own benchmark: ``smml bench serving_batching``.

    smml bench serving_soak [--requests 1000] [--concurrency 32] [--model tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

from smml_lib.common.device import cpu_name, device_name
from smml_lib.serving import loadgen
from smml_lib.serving.process import start_server

GROWTH_TARGET = 0.05  # of the RSS after the warm-up
STALL_TARGET = 2.0  # largest inter-token gap with the 10 MB sender / without
SHAPE = {"message", "type", "param", "code"}


def _shaped(response: httpx.Response | None) -> bool:
    try:
        return response is not None and set(response.json()["error"]) == SHAPE
    except (ValueError, KeyError, TypeError):
        return False


async def _one(client: Any, model: str, i: int, rng: random.Random) -> str:
    """One request; returns "ok", "429", "shaped" (another OpenAI-shaped error) or "lost: ..." / "unshaped: ..."."""
    import openai  # deferred: the dev extra; `smml bench --list` imports every benchmark

    prompt, tokens, stream = loadgen.make_prompts(1, seed=i)[0], rng.randint(4, 32), i % 3 == 0
    extra = {"ignore_eos": True}
    try:
        if i % 2 == 0:
            args = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
                    "temperature": 0.7, "seed": i, "extra_body": extra}
            if stream:
                got = [c async for c in await client.chat.completions.create(**args, stream=True)]
                ok = got and got[-1].choices and got[-1].choices[0].finish_reason == "length"
            else:
                ok = (await client.chat.completions.create(**args)).usage.completion_tokens == tokens
        else:
            args = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0.7, "seed": i,
                    "extra_body": extra}
            if stream:
                got = [c async for c in await client.completions.create(**args, stream=True)]
                ok = got and got[-1].choices and got[-1].choices[0].finish_reason == "length"
            else:
                ok = (await client.completions.create(**args)).usage.completion_tokens == tokens
        return "ok" if ok else "lost: incomplete answer"
    except openai.APIStatusError as exc:
        if not _shaped(exc.response):
            return f"unshaped: {exc.status_code} {exc.response.text[:80]!r}"
        return "429" if exc.status_code == 429 else "shaped"
    except openai.APIError as exc:  # a stream's error event (shaped by construction), or a dropped connection
        return "shaped" if isinstance(exc.body, dict) and SHAPE <= set(exc.body) else f"lost: {exc!r}"[:120]


async def _soak_requests(base_url: str, model: str, n: int, concurrency: int, seed: int) -> list[str]:
    import openai  # deferred: the dev extra; `smml bench --list` imports every benchmark

    rng, todo, out = random.Random(seed), iter(range(n)), []
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120,
                                http_client=openai.DefaultAsyncHttpxClient(
                                    limits=httpx.Limits(max_connections=concurrency)))

    async def user() -> None:
        for i in todo:
            out.append(await _one(client, model, seed * 100_000 + i, rng))
            if out[-1] == "429":
                await asyncio.sleep(0.5)

    try:
        await asyncio.gather(*(user() for _ in range(concurrency)))
    finally:
        await client.close()
    return out


def soak(model: str, requests: int, concurrency: int) -> dict[str, Any]:
    with start_server(model, max_batch=16, max_queue=12) as server:
        asyncio.run(_soak_requests(server.base_url, server.model_name, 100, concurrency, seed=0))  # warm-up
        rss0, t0 = server.rss_bytes(), time.perf_counter()
        results = asyncio.run(_soak_requests(server.base_url, server.model_name, requests, concurrency, seed=1))
        wall_s, rss1 = time.perf_counter() - t0, server.rss_bytes()
    kinds = {k: sum(r == k for r in results) for k in ("ok", "429", "shaped")}
    return {"results": results, "kinds": kinds, "lost": [r for r in results if r.startswith("lost")],
            "unshaped": [r for r in results if r.startswith("unshaped")], "rss0": rss0, "rss1": rss1,
            "wall_s": wall_s}


def _largest_gap_s(url: str, model: str, tokens: int) -> float:
    body = {"model": model, "prompt": "A stream that must not stall", "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}
    arrivals = []
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.perf_counter())
    return max(b - a for a, b in zip(arrivals[1:-2], arrivals[2:-1]))


SENDER = """
import sys, time, httpx
url, model, pause_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
big = b'{"model": "' + model.encode() + b'", "prompt": "' + b"x" * (10 * 2**20) + b'"}'
with httpx.Client(timeout=60) as c:
    while True:
        r = c.post(url + "/v1/completions", content=big, headers={"content-type": "application/json"})
        print(r.status_code, "error" in r.json() and set(r.json()["error"]) == {"message", "type", "param", "code"},
              flush=True)
        time.sleep(pause_s)
"""


SINK = """
import asyncio
BODY = b'{"error": {"message": "too large", "type": "invalid_request_error", "param": null, "code": null}}'
async def answer(reader, writer):
    try:
        await reader.readuntil(b"\\r\\n\\r\\n")  # the headers; the body is never read, as our server does
        writer.write(b"HTTP/1.1 413 Payload Too Large\\r\\ncontent-type: application/json\\r\\nconnection: close"
                     b"\\r\\ncontent-length: " + str(len(BODY)).encode() + b"\\r\\n\\r\\n" + BODY)
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def stall(model: str, runs: int = 3, tokens: int = 200, pause_s: float = 0.25, control: bool = False) -> dict[str, Any]:
    """The stream's largest gap alone and while another process sends 10 MB bodies, ``pause_s`` apart.

    With ``pause_s=0`` the sender sends back to back and keeps a whole core busy copying bytes: on a small
    shared machine that slows every process, the server's or not, so the target uses a paced sender.
    ``control=True`` aims the sender at ``SINK`` instead of the server: what the machine's load alone costs.
    """
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True) if control else None
    try:
        sink_url = f"http://127.0.0.1:{int(sink.stdout.readline())}" if sink else None
        return _stall(model, runs, tokens, pause_s, sink_url)
    finally:
        if sink is not None:
            sink.kill()
            sink.wait()


def _stall(model: str, runs: int, tokens: int, pause_s: float, sink_url: str | None) -> dict[str, Any]:
    with start_server(model, max_batch=4) as server:
        _largest_gap_s(server.url, server.model_name, 20)  # warm-up
        alone, loaded, answers = [], [], []
        for _ in range(runs):
            alone.append(_largest_gap_s(server.url, server.model_name, tokens))
            sender = subprocess.Popen([sys.executable, "-c", SENDER, sink_url or server.url, server.model_name,
                                       str(pause_s)], stdout=subprocess.PIPE, text=True)
            try:
                answers.append(sender.stdout.readline().split())  # the first 10 MB body was answered
                loaded.append(_largest_gap_s(server.url, server.model_name, tokens))
            finally:
                sender.kill()
                answers += [line.split() for line in sender.communicate()[0].splitlines()]
    answers = [(int(a[0]), a[1] == "True") for a in answers if len(a) == 2]
    return {"alone_s": alone, "loaded_s": loaded, "answers": answers,
            "ratio": statistics.median(loaded) / statistics.median(alone)}


async def _sigterm_scenario(server: Any, running: int, waiting: int) -> dict[str, Any]:
    outcomes: list[tuple[int, str, str]] = []

    async def one(http: httpx.AsyncClient, i: int) -> None:
        body = {"model": server.model_name, "prompt": f"Request {i}", "max_tokens": 150 if i % 4 == 0 else 900,
                "ignore_eos": True, "stream": i % 2 == 0}
        try:
            async with http.stream("POST", "/v1/completions", json=body) as r:
                raw = (await r.aread()).decode()
            outcomes.append((r.status_code, r.headers.get("content-type", ""), raw))
        except httpx.HTTPError as exc:
            outcomes.append((0, "", f"{type(exc).__name__}: {exc}"))

    async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                 limits=httpx.Limits(max_connections=running + waiting + 4)) as http:
        await http.post("/v1/completions", json={"model": server.model_name, "prompt": "warm-up", "max_tokens": 4})
        tasks, deadline = [], time.perf_counter() + 30
        for first, n, key, want in ((0, running, "running", running), (running, waiting, "waiting", waiting)):
            tasks += [asyncio.create_task(one(http, i)) for i in range(first, first + n)]
            while time.perf_counter() < deadline:  # the running ones first, then the waiting ones
                h = (await http.get("/health")).json()
                if h[key] >= want:
                    break
                await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        server.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*tasks)
        await asyncio.to_thread(server.process.wait, 60)
        exit_s = time.perf_counter() - t0
    streams = [o for o in outcomes if "event-stream" in o[1]]
    plain = [o for o in outcomes if "event-stream" not in o[1]]
    return {"exit_s": exit_s, "state": h, "complete": sum(o[0] == 200 and "error" not in o[2] for o in plain)
            + sum('"finish_reason": "length"' in o[2] and '"error"' not in o[2] for o in streams),
            "shaped_errors": sum(o[0] != 200 and _shaped_text(o[2]) for o in plain)
            + sum('"error"' in o[2] for o in streams),
            "plain_500": sum(o[0] >= 500 and not _shaped_text(o[2]) for o in plain),
            "cut_streams": sum(not o[2].rstrip().endswith("data: [DONE]") for o in streams),
            "no_answer": sum(o[0] == 0 for o in outcomes), "total": len(outcomes)}


def _shaped_text(raw: str) -> bool:
    return _shaped(httpx.Response(200, content=raw.encode()))


def sigterm(model: str, drain_timeout_s: float = 5.0) -> dict[str, Any]:
    server = start_server(model, max_batch=16, max_queue=24, drain_timeout_s=drain_timeout_s)
    try:
        out = asyncio.run(_sigterm_scenario(server, 16, 24))
        log = server.log_path.read_text(errors="replace")
    finally:
        server.stop()
    return {**out, "drain_timeout_s": drain_timeout_s, "traceback": "Traceback" in log or "CancelledError" in log}


VERDICT = {True: "PASS", False: "MISS"}


def _print_soak(args: argparse.Namespace, s: dict[str, Any]) -> None:
    verdict = VERDICT
    growth = (s["rss1"] - s["rss0"]) / s["rss0"]
    print(f"\n1. soak: {args.requests} requests (half chat, half completions, a third streaming) at concurrency "
          f"{args.concurrency} through AsyncOpenAI in {s['wall_s']:.1f} s: {s['kinds']['ok']} answered, "
          f"{s['kinds']['429']} x 429, {s['kinds']['shaped']} other shaped errors")
    print(f"   lost {len(s['lost'])}, non-OpenAI-shaped errors {len(s['unshaped'])}  "
          f"{verdict[not s['lost'] and not s['unshaped'] and len(s['results']) == args.requests]}"
          + (f"  e.g. {(s['lost'] + s['unshaped'])[0]}" if s["lost"] or s["unshaped"] else ""))
    print(f"   server RSS {s['rss0'] / 1e6:.1f} MB -> {s['rss1'] / 1e6:.1f} MB ({100 * growth:+.2f}%, target < "
          f"{100 * GROWTH_TARGET:.0f}%)  {verdict[growth < GROWTH_TARGET]}")


def _print_stalls(model: str) -> None:
    verdict = VERDICT
    for pause_s, control in ((0.25, False), (0.0, False), (0.0, True)):
        st = stall(model, pause_s=pause_s, control=control)
        codes = sorted({c for c, _ in st["answers"]})
        how = f"one every {pause_s} s" if pause_s else "back to back (the sender saturates a core)"
        how += ", CONTROL: sent to a sink that is not our server" if control else ""
        print(f"\n2. stall, 10 MB bodies {how}: largest inter-token gap of a 200-token stream, alone "
              f"{', '.join(f'{1e3 * g:.1f}' for g in st['alone_s'])} ms; with the sender "
              f"{', '.join(f'{1e3 * g:.1f}' for g in st['loaded_s'])} ms ({len(st['answers'])} bodies answered "
              f"{codes}, all OpenAI-shaped: {all(ok for _, ok in st['answers'])})")
        target = f"target < {STALL_TARGET:.0f}x  {verdict[st['ratio'] < STALL_TARGET]}" if pause_s else "context"
        print(f"   ratio of medians {st['ratio']:.2f}x ({target})")


def _print_sigterm(t: dict[str, Any]) -> None:
    verdict = VERDICT
    print(f"\n3. SIGTERM with {t['state']['running']} running and {t['state']['waiting']} waiting (drain timeout "
          f"{t['drain_timeout_s']:.0f} s): {t['complete']} complete answers, {t['shaped_errors']} OpenAI-shaped errors "
          f"of {t['total']} requests; no answer {t['no_answer']}")
    ok = t["plain_500"] == 0 and t["cut_streams"] == 0 and t["no_answer"] == 0 and \
        t["complete"] + t["shaped_errors"] == t["total"]
    print(f"   plain-text 500s {t['plain_500']}, streams cut without [DONE] {t['cut_streams']}  {verdict[ok]}")
    print(f"   exit {t['exit_s']:.2f} s after SIGTERM (target < {t['drain_timeout_s'] + 2:.0f} s)  "
          f"{verdict[t['exit_s'] < t['drain_timeout_s'] + 2]}; traceback in the log: {t['traceback']}  "
          f"{verdict[not t['traceback']]}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="smml bench serving_soak", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--parts", nargs="+", choices=["soak", "stall", "sigterm"], default=["soak", "stall", "sigterm"])
    args = p.parse_args(argv)
    print(f"machine: {device_name()} / {cpu_name()}; model {args.model}")

    if "soak" in args.parts:
        _print_soak(args, soak(args.model, args.requests, args.concurrency))
    if "stall" in args.parts:
        _print_stalls(args.model)
    if "sigterm" in args.parts:
        _print_sigterm(sigterm(args.model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
