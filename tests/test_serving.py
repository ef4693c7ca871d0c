"""The completion server: OpenAI shapes, streaming, 400/404/429 answers, disconnects, and batching correctness.

Servers run in-process on 127.0.0.1 with the tiny Llama (a thread; loopback only). One test starts a real
subprocess server to check start-up, shutdown and that no process is left behind.

    .venv/bin/pytest tests/test_serving.py -q
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import psutil
import pytest
from httpx_sse import connect_sse

from smml_lib.models import inference
from smml_lib.serving.process import ServerStartError, start_server

PROMPT = "The scheduler admits a new request"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: in-process servers share this process


@pytest.fixture(scope="module")
def server():
    with start_server("tiny", in_process=True, scheduler="continuous", max_batch=4, max_queue=16) as handle:
        yield handle


def _post(server, **body):
    return httpx.post(server.url + "/v1/completions", json={"model": "tiny", **body}, timeout=30)


def _wait_until(predicate, timeout_s=10.0):
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_completion_has_openai_shape(server):
    r = _post(server, prompt=PROMPT, max_tokens=6, temperature=0, ignore_eos=True)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "tiny"
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["text"]
    usage = body["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["prompt_tokens"] == len(server_tokenizer()(PROMPT).input_ids)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"


def server_tokenizer():
    from transformers import AutoTokenizer

    from smml_lib.models.tiny import tiny_llama_path

    return AutoTokenizer.from_pretrained(tiny_llama_path())


def test_list_prompt_gives_one_choice_each_and_token_ids_equal_text(server):
    ids = server_tokenizer()(PROMPT).input_ids
    r = _post(server, prompt=[PROMPT, "Another prompt"], max_tokens=5, temperature=0, ignore_eos=True)
    assert [c["index"] for c in r.json()["choices"]] == [0, 1]
    by_ids = _post(server, prompt=ids, max_tokens=5, temperature=0, ignore_eos=True).json()
    assert by_ids["choices"][0]["text"] == r.json()["choices"][0]["text"]


def test_streaming_sends_one_chunk_per_token_then_usage_and_done(server):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 7, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(timeout=30) as client, connect_sse(client, "POST", server.url + "/v1/completions",
                                                         json=body) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        data = [event.data for event in source.iter_sse()]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    token_chunks = [c for c in chunks if c["choices"]]
    assert len(token_chunks) == 7
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in token_chunks] == [None] * 6 + ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7
    plain = _post(server, prompt=PROMPT, max_tokens=7, temperature=0, ignore_eos=True).json()
    assert "".join(c["choices"][0]["text"] for c in token_chunks) == plain["choices"][0]["text"]


def test_stop_string_cuts_the_text_and_finishes_with_stop(server):
    full = _post(server, prompt=PROMPT, max_tokens=12, temperature=0, ignore_eos=True).json()["choices"][0]["text"]
    stop = full[len(full) // 2:len(full) // 2 + 2]
    r = _post(server, prompt=PROMPT, max_tokens=12, temperature=0, ignore_eos=True, stop=[stop]).json()
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["text"] == full[:full.index(stop)]


def test_sampling_with_a_seed_is_reproducible(server):
    a = _post(server, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=7, ignore_eos=True).json()
    b = _post(server, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=7, ignore_eos=True).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


@pytest.mark.parametrize("body, status, reason", [
    ({"model": "tiny"}, 400, "missing required field 'prompt'"),
    ({"model": "tiny", "prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "a", "temperature": -1}, 400, "temperature"),
    ({"model": "tiny", "prompt": [1.5, 2]}, 400, "prompt must be"),
    ({"model": "tiny", "prompt": []}, 400, "empty"),
    ({"model": "tiny", "prompt": [5, 99999]}, 400, "token ids must be in"),
    ({"model": "tiny", "prompt": "a", "max_tokens": 5000}, 400, "maximum context length"),
    ({"model": "tiny", "prompt": "a", "n": 2}, 400, "n=2 is not supported"),
    ({"model": "gpt-4", "prompt": "a"}, 404, "does not exist"),
])
def test_bad_requests_get_a_reason(server, body, status, reason):
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=10)
    assert r.status_code == status
    error = r.json()["error"]
    assert reason in error["message"] and error["type"] == "invalid_request_error"


def test_invalid_json_gets_400(server):
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


@pytest.fixture
def one_slot_server():
    with start_server("tiny", in_process=True, scheduler="continuous", max_batch=1, max_queue=1) as handle:
        yield handle


LONG = {"model": "tiny", "prompt": PROMPT, "max_tokens": 900, "temperature": 0, "ignore_eos": True}


def test_full_queue_answers_429_and_frees_up(one_slot_server):
    s = one_slot_server
    stream = {**LONG, "stream": True}
    with httpx.Client(timeout=30) as client, \
            connect_sse(client, "POST", s.url + "/v1/completions", json=stream) as running:
        events = running.iter_sse()  # keep the iterator: dropping it would close the stream
        next(events)  # a token arrived: this request holds the only slot
        with connect_sse(client, "POST", s.url + "/v1/completions", json=stream) as queued:
            assert queued.response.status_code == 200  # it waits in the queue of one
            assert _wait_until(lambda: s.health()["waiting"] == 1)
            r = httpx.post(s.url + "/v1/completions", json=LONG, timeout=10)
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "queue_full" and "busy" in r.json()["error"]["message"]
    assert _wait_until(lambda: s.health()["running"] == 0 and s.health()["waiting"] == 0)
    assert httpx.post(s.url + "/v1/completions", json={**LONG, "max_tokens": 3}).status_code == 200


def test_streaming_client_that_disconnects_frees_its_slot(one_slot_server):
    s = one_slot_server
    with httpx.Client(timeout=30) as client, connect_sse(client, "POST", s.url + "/v1/completions",
                                                         json={**LONG, "stream": True}) as source:
        events = source.iter_sse()
        next(events), next(events)  # two tokens arrived: the request is running
        assert s.health()["running"] == 1
    # leaving the block closed the connection mid-stream
    assert _wait_until(lambda: s.health()["running"] == 0), "the slot was not freed after the disconnect"
    health = s.health()
    assert health["finished_disconnected"] == 1 and health["tokens"] < 900
    t0 = time.perf_counter()
    assert httpx.post(s.url + "/v1/completions", json={**LONG, "max_tokens": 3}).status_code == 200
    assert time.perf_counter() - t0 < 15


def test_non_streaming_client_that_disconnects_frees_its_slot(one_slot_server):
    s = one_slot_server
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(s.url + "/v1/completions", json=LONG, timeout=httpx.Timeout(0.5, connect=5))
    assert _wait_until(lambda: s.health()["running"] == 0), "the slot was not freed after the disconnect"
    assert s.health()["finished_disconnected"] == 1


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_batched_greedy_outputs_equal_solo_outputs(tiny_model, scheduler):
    """Requests that join and leave a running batch produce exactly the tokens they produce alone."""
    from smml_lib.serving.config import BatchingConfig
    from smml_lib.serving.kvbatch import Sequence
    from smml_lib.serving.schedulers import make_scheduler

    model, tok = tiny_model
    prompts = [f"Request {i}: " + "tokens and padding " * (i % 5) + "end" for i in range(10)]
    lengths = [3 + (7 * i) % 19 for i in range(10)]
    solo = [inference.generated_tokens(model, tok, p, max_new_tokens=n) for p, n in zip(prompts, lengths)]
    sched = make_scheduler(BatchingConfig(scheduler, max_batch=4, max_queue=16, max_wait_ms=5), model, tok).start()
    try:
        seqs = []
        for i, (p, n) in enumerate(zip(prompts, lengths)):
            seqs.append(Sequence(tok(p).input_ids, n, ignore_eos=True))
            assert sched.submit([seqs[-1]])
            time.sleep(0.003 * (i % 3))  # staggered arrivals: newcomers join a batch mid-flight
        assert all(s.done.wait(60) for s in seqs)
        stats = sched.stats()
    finally:
        sched.stop()
    assert [s.out_ids for s in seqs] == solo
    assert stats["mean_decode_batch"] > 1.5, "the test should exercise real batching"


def test_http_outputs_under_concurrency_equal_solo_outputs(server, tiny_model):
    model, tok = tiny_model
    prompts = [f"Prompt number {i} " + "x" * i for i in range(8)]
    results = [None] * len(prompts)

    def ask(i):
        results[i] = _post(server, prompt=prompts[i], max_tokens=4 + i, temperature=0, ignore_eos=True).json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, p in enumerate(prompts):
        ids = inference.generated_tokens(model, tok, p, max_new_tokens=4 + i)
        assert results[i]["choices"][0]["text"] == tok.decode(ids, skip_special_tokens=True)


def test_two_hundred_requests_at_concurrency_32_none_lost():
    """A small version of the 1,000-request soak: every request is answered 200 or 429, the books balance."""
    from smml_lib.serving import loadgen

    with start_server("tiny", in_process=True, scheduler="continuous", max_batch=8, max_queue=8) as s:
        spec = loadgen.LoadSpec("tiny", loadgen.make_prompts(16), max_tokens=4, ignore_eos=True)
        results = loadgen.run_sync(loadgen.run_level(s.base_url, spec, concurrency=32, num_requests=200,
                                                     time_limit_s=60, pause_after_429_s=0.01))
        assert _wait_until(lambda: s.health()["running"] == 0 and s.health()["waiting"] == 0)
        health = s.health()
    statuses = [r.status for r in results]
    assert len(results) == 200 and sorted({r.index for r in results}) == list(range(200))
    assert set(statuses) <= {200, 429}, f"unexpected answers: {set(statuses)}"
    ok = [r for r in results if r.ok]
    assert all(r.output_tokens == 4 for r in ok)
    assert health["rejected"] == statuses.count(429)
    assert health["submitted"] == len(ok) == health["finished_length"]


def test_subprocess_server_starts_answers_and_leaves_no_process():
    with start_server("tiny", scheduler="static", max_batch=2, max_wait_ms=5) as s:
        pid = s.pid
        assert pid != psutil.Process().pid and psutil.pid_exists(pid)
        assert s.health()["scheduler"] == "static"
        r = httpx.post(s.base_url + "/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3})
        assert r.status_code == 200
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_subprocess_server_exits_when_the_process_that_started_it_is_killed():
    """A notebook kernel that crashes (or is killed) must not leave its server running."""
    import subprocess
    import sys

    script = ("import time; from smml_lib.serving.process import start_server; "
              "s = start_server('tiny', max_batch=2); print(s.pid, flush=True); time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert psutil.pid_exists(pid)
    finally:
        parent.kill()  # SIGKILL: no atexit hook runs, only the server's own watchdog can notice
        parent.wait()
    def gone():
        return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    assert _wait_until(gone, timeout_s=20), "the server outlived the process that started it"


def test_subprocess_server_with_a_bad_model_fails_fast_with_the_reason():
    t0 = time.perf_counter()
    with pytest.raises(ServerStartError, match="No checkpoint folder"):
        start_server("/nonexistent/llama", ready_timeout_s=60)
    assert time.perf_counter() - t0 < 30


def test_variants_serve_the_same_weights_under_several_schedulers():
    variants = {"one-at-a-time": {"scheduler": "static", "max_batch": 1}, "continuous": {"max_batch": 4}}
    with start_server("tiny", in_process=True, variants=variants, reuse=True) as s:
        assert start_server("tiny", in_process=True, variants=variants, reuse=True) is s  # a re-run cell reuses it
        listed = httpx.get(s.base_url + "/models").json()["data"]
        assert [(m["id"], m["scheduler"], m["max_batch"]) for m in listed] == [
            ("one-at-a-time", "static", 1), ("continuous", "continuous", 4)]
        texts = {m: _post(s, model=m, prompt=PROMPT, max_tokens=5, temperature=0,
                          ignore_eos=True).json()["choices"][0]["text"] for m in variants}
        assert texts["one-at-a-time"] == texts["continuous"]
        assert _post(s, prompt=PROMPT).status_code == 404  # "tiny" is not one of the served names
        per_model = s.health()["models"]
        assert per_model["one-at-a-time"]["submitted"] == per_model["continuous"]["submitted"] == 1
    assert not s.running


def test_server_config_round_trips_through_its_command_line_and_checks_variants():
    from smml_lib.serving.config import BatchingConfig, ServerConfig
    from smml_lib.serving.process import parser

    cfg = ServerConfig.build("tiny", max_batch=4, max_queue=16, port=0,
                             variants={"b1": {"scheduler": "static", "max_batch": 1}, "plain": {}})
    assert cfg.schedulers == {"b1": BatchingConfig("static", 1, 16), "plain": BatchingConfig("continuous", 4, 16)}
    assert ServerConfig.from_args(parser().parse_args(cfg.argv())) == cfg  # what the subprocess is told
    assert cfg.key() == ServerConfig.build("tiny", max_batch=4, max_queue=16, port=0, variants={
        "b1": {"scheduler": "static", "max_batch": 1}, "plain": {}}).key()  # the reuse key is stable
    with pytest.raises(ValueError, match="expected NAME="):
        ServerConfig.from_args(parser().parse_args(["--variant", "b1={max_batch: 1}"]))
    with pytest.raises(ValueError, match="only the batching settings"):
        ServerConfig.build("tiny", variants={"x": {"max_batchh": 2}})
    with pytest.raises(ValueError, match="scheduler="):
        BatchingConfig("dynamic")
    with pytest.raises(TypeError, match="unknown server setting"):
        ServerConfig.build("tiny", max_bach=3)
