"""The completion server as OpenAI-API users meet it: the official ``openai`` client, raw HTTP, metrics, shutdown.

Servers run in-process with the tiny Llama (loopback only), except the shutdown case, which sends a real
SIGTERM to a subprocess server under load.

    .venv/bin/pytest tests/test_serving_openai.py -q
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time

import httpx
import openai
import psutil
import pytest

from smml_lib.serving import metrics
from smml_lib.serving.process import start_server
from smml_lib.serving.text import held_back_chars

PROMPT = "The scheduler admits a new request"
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain batching."}]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: in-process servers share this process


@pytest.fixture(scope="module")
def server():
    with start_server("tiny", in_process=True, max_batch=4, max_queue=8, max_body_bytes=64_000) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=30)


def _error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_completions_and_chat_through_the_official_client(client):
    c = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert c.object == "text_completion" and c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 6
    chat = client.chat.completions.create(model="tiny", messages=CHAT, max_completion_tokens=5, temperature=0,
                                          seed=3, top_p=0.9, extra_body={"ignore_eos": True})
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].finish_reason == "length"
    assert chat.usage.completion_tokens == 5
    # the prompt is the tokenizer's chat template, rendered: the same ids as apply_chat_template
    from smml_lib.models.loading import load_llama

    _, tok = load_llama("tiny")
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert chat.usage.prompt_tokens == len(ids)
    plain = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert plain.choices[0].text == chat.choices[0].message.content


def test_chat_streaming_equals_non_streaming_and_reports_usage(client):
    args = {"model": "tiny", "messages": CHAT, "max_tokens": 8, "temperature": 0, "extra_body": {"ignore_eos": True}}
    whole = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_models_retrieve_and_unknown_model(client):
    assert client.models.retrieve("tiny").id == "tiny"
    assert [m.id for m in client.models.list()] == ["tiny"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4", messages=CHAT)
    assert "does not exist" in str(err.value)


def test_client_errors_are_400s_that_name_the_limit(client, server):
    with pytest.raises(openai.BadRequestError, match="maximum context length is 1024"):
        client.completions.create(model="tiny", prompt="word " * 2000, max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="at most 8"):  # never fits the queue: 400, never a 429
        client.completions.create(model="tiny", prompt=["a"] * 9, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="stop strings must not be empty"):
        client.completions.create(model="tiny", prompt=PROMPT, stop="")


def test_no_op_values_are_accepted_and_unknown_fields_ignored(server, caplog):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": None, "best_of": 1, "logprobs": None, "logit_bias": {},
            "n": 1, "echo": False, "presence_penalty": 0, "some_future_field": 1, "temperature": 0}
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 16  # max_tokens: null = default 16
    httpx.post(server.url + "/v1/completions", json={**body, "max_tokens": 2}, timeout=30)
    assert sum("some_future_field" in m for m in caplog.messages) == 1  # logged once
    chat = {"model": "tiny", "messages": CHAT, "logprobs": False, "top_logprobs": None, "max_tokens": 2}
    assert httpx.post(server.url + "/v1/chat/completions", json=chat, timeout=30).status_code == 200
    r = httpx.post(server.url + "/v1/completions", json={**body, "best_of": 3}, timeout=30)
    assert r.status_code == 400 and "best_of=3 is not supported" in _error(r)["message"]


@pytest.mark.parametrize("method, path, data, headers, status, reason", [
    ("GET", "/v1/nothing", None, {}, 404, "no such endpoint"),
    ("GET", "/v1/completions", None, {}, 405, "GET is not allowed"),
    ("POST", "/v1/completions", b"{not json", {"content-type": "application/json"}, 400, "not valid JSON"),
    ("POST", "/v1/completions", b'{"model": "tiny", "prompt": "a"}', {"content-type": "text/plain"}, 400,
     "Content-Type: application/json"),
    ("POST", "/v1/completions", b'{"model": "tiny", "prompt": "a"}', {}, 400, "no content type"),
    ("POST", "/v1/completions", b"[1, 2]", {"content-type": "application/json"}, 400, "JSON object"),
    ("POST", "/v1/chat/completions", b'{"model": "tiny", "messages": []}', {"content-type": "application/json"},
     400, "messages"),
    ("POST", "/v1/completions", b'{"model": "tiny", "prompt": "' + b"x" * 70_000 + b'"}',
     {"content-type": "application/json"}, 413, "limit of 64000 bytes"),
])
def test_raw_http_errors_are_openai_shaped(server, method, path, data, headers, status, reason):
    r = httpx.request(method, server.url + path, content=data, headers=headers, timeout=30)
    assert r.status_code == status and reason in _error(r)["message"]


def test_a_declared_body_over_the_limit_is_refused_unread_and_the_connection_closed(server):
    """Kept alive, the connection would make uvicorn parse the unread megabytes on the event loop (the stall
    benchmark: a concurrent stream's largest gap 4.7x with 10 MB bodies back to back; closed: 2.0x)."""
    r = httpx.post(server.url + "/v1/completions", content=b"x" * 200_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.headers["connection"] == "close"


def test_a_chunked_body_over_the_limit_gets_413(server):
    def body():
        for _ in range(20):
            yield b"x" * 10_000

    r = httpx.post(server.url + "/v1/completions", content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and _error(r)["code"] == "request_too_large"


def test_refusals_before_the_scheduler_are_counted_in_metrics(server):
    """Bad JSON, an unknown model, a request that never fits and a 413 each count as a client error."""
    before = metrics.scrape(server.url)
    url, h = server.url + "/v1", {"content-type": "application/json"}
    assert httpx.post(url + "/completions", content=b"{not json", headers=h).status_code == 400
    assert httpx.post(url + "/chat/completions", json={"model": "gpt-4", "messages": CHAT}).status_code == 404
    assert httpx.post(url + "/completions", json={"model": "tiny", "prompt": ["a"] * 9}).status_code == 400
    assert httpx.post(url + "/completions", content=b"x" * 70_000, headers=h).status_code == 413
    d = metrics.delta(before, metrics.scrape(server.url))
    errors = {(dict(lab)["model"], dict(lab)["endpoint"]): v for (name, lab), v in d.items()
              if name == "smml_requests_total" and dict(lab)["outcome"] == "client_error" and v}
    assert errors == {("unknown", "completions"): 2, ("unknown", "chat"): 1, ("tiny", "completions"): 1}


def test_held_back_chars_is_the_longest_stop_prefix_at_the_end():
    assert held_back_chars("the hom", ["home"]) == 3 and held_back_chars("the hx", ["home"]) == 0
    assert held_back_chars("aab", ["abc", "b"]) == 2 and held_back_chars("", ["ab"]) == 0


def test_streamed_text_equals_non_streamed_for_random_prompts_and_stops(server):
    """Property test: for random prompts and stop strings (inside the text, spanning tokens, absent), the
    streamed deltas joined equal the non-streamed text, and the finish reasons agree."""
    rng = random.Random(13)
    words = ["cache", "token", "batch", "queue", "slot", "home", "prefill", "decode"]
    cases = 0
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for _ in range(12):
            prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
            base = {"model": "tiny", "prompt": prompt, "max_tokens": 16, "temperature": 0, "ignore_eos": True}
            full = http.post("/v1/completions", json=base).json()["choices"][0]["text"]
            for _ in range(3):
                i = rng.randrange(max(len(full) - 1, 1))
                stops = [full[i:i + rng.randint(1, 4)] or "zz", rng.choice(words), "".join(rng.sample("abcxyz", 2))]
                body = {**base, "stop": rng.sample(stops, rng.randint(1, 3))}
                plain = http.post("/v1/completions", json=body).json()["choices"][0]
                with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                    events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
                assert events[-1] == "[DONE]"
                chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
                assert "".join(c["text"] for c in chunks) == plain["text"], (prompt, body["stop"], full)
                assert chunks[-1]["finish_reason"] == plain["finish_reason"]
                cases += plain["finish_reason"] == "stop"
    assert cases >= 10, "the property test should exercise stop strings that match"


def test_metrics_agree_with_what_the_clients_saw(server):
    before = metrics.scrape(server.url)

    async def load() -> list:
        aclient = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        async def one(i: int) -> tuple:
            t0 = time.perf_counter()
            stream = await aclient.completions.create(model="tiny", prompt=f"{PROMPT} {i}", max_tokens=5,
                                                      temperature=0, stream=True, extra_body={"ignore_eos": True},
                                                      stream_options={"include_usage": True})
            ttft, usage = None, None
            async for chunk in stream:
                ttft = ttft or time.perf_counter() - t0
                usage = chunk.usage or usage
            return ttft, usage
        try:
            return await asyncio.gather(*(one(i) for i in range(8)))
        finally:
            await aclient.close()

    got = asyncio.run(load())
    d = metrics.delta(before, metrics.scrape(server.url))
    assert metrics.total(d, "smml_requests_total", outcome="ok", endpoint="completions") == 8
    assert metrics.total(d, "smml_generation_tokens_total") == sum(u.completion_tokens for _, u in got) == 40
    assert metrics.total(d, "smml_prompt_tokens_total") == sum(u.prompt_tokens for _, u in got)
    assert metrics.total(d, "smml_time_to_first_token_seconds_count") == 8
    assert metrics.total(d, "smml_inter_token_latency_seconds_count") == 8 * 4
    p50 = metrics.histogram_quantile(d, "smml_time_to_first_token_seconds", 0.5)
    assert 0 < p50 <= sorted(t for t, _ in got)[-1]
    assert metrics.total(d, "smml_batch_slots_max") == 4 and metrics.total(d, "smml_num_sequences_running") == 0
    text = httpx.get(server.url + "/metrics").text
    assert "# TYPE smml_time_to_first_token_seconds histogram" in text


def test_histogram_quantile_interpolates_inside_buckets():
    samples = {("h_bucket", (("le", "1.0"),)): 0.0, ("h_bucket", (("le", "2.0"),)): 10.0,
               ("h_bucket", (("le", "+Inf"),)): 10.0}
    assert metrics.histogram_quantile(samples, "h", 0.5) == pytest.approx(1.5)


def test_sigterm_under_load_drains_and_every_client_gets_an_answer():
    """16 running and 8 waiting when SIGTERM comes: finished answers or OpenAI-shaped errors, streams end with
    [DONE], new requests get 503, the process exits within the drain timeout + 2 s with no traceback."""
    drain_s = 1.5
    s = start_server("tiny", max_batch=16, max_queue=24, drain_timeout_s=drain_s)
    try:
        outcomes: list = []

        async def one(http: httpx.AsyncClient, i: int) -> None:
            body = {"model": "tiny", "prompt": f"{PROMPT} {i}", "max_tokens": 3 if i % 4 == 0 else 900,
                    "ignore_eos": True, "stream": i % 2 == 0}
            async with http.stream("POST", "/v1/completions", json=body) as r:
                raw = (await r.aread()).decode()
            outcomes.append((i, r.status_code, r.headers.get("content-type", ""), raw))

        async def scenario() -> None:
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as http:
                tasks = [asyncio.create_task(one(http, i)) for i in range(24)]
                while (await http.get("/health")).json()["running"] < 16:
                    await asyncio.sleep(0.05)
                t0 = time.perf_counter()
                s.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                late = await http.post("/v1/completions", json={"model": "tiny", "prompt": "late"})
                await asyncio.gather(*tasks)
                outcomes.append(("late", late.status_code, late.headers.get("content-type", ""), late.text))
                await asyncio.to_thread(s.process.wait, drain_s + 10)
                outcomes.append(("exit_s", time.perf_counter() - t0, "", ""))

        asyncio.run(scenario())
    finally:
        s.stop()
    exit_s = outcomes.pop()[1]
    for i, status, ctype, raw in outcomes:
        if "event-stream" in ctype:
            assert raw.rstrip().endswith("data: [DONE]"), (i, raw[-300:])
        else:
            assert "application/json" in ctype, (i, status, raw[:200])
            if status != 200:
                assert set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}
    assert outcomes[-1][1] == 503 and "shutting down" in outcomes[-1][3]
    aborted = [o for o in outcomes[:-1] if o[1] != 200 or "shutting down" in o[3]]
    assert aborted, "the long requests should have been ended by the drain timeout"
    assert exit_s < drain_s + 2, f"exited {exit_s:.1f} s after SIGTERM"
    log = s.log_path.read_text()
    assert "Traceback" not in log and "CancelledError" not in log, log[-2000:]
    assert not psutil.pid_exists(s.pid) or psutil.Process(s.pid).status() == psutil.STATUS_ZOMBIE
