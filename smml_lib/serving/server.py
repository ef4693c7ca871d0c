"""An OpenAI-compatible completion service over a Llama: requests -> sequences -> text, one model thread behind.

    smml serve --model tiny --scheduler continuous --max-batch 16 --port 8000
    curl -s 127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}'

How a request flows: the event loop checks it against the schema and against the cheap limits first (the
context length is bounded from the prompt's *byte* length before any tokenizing: no token is longer than
the tokenizer's longest token), then tokenizes it, or renders the chat template, **in a worker thread**, so
a big prompt never freezes the other streams. The sequences go to the scheduler (``smml_lib.serving.schedulers``);
a full queue answers 429 with ``Retry-After`` at once, so overload shows up as fast refusals, not as timeouts,
while a request that could never fit (more prompts than the queue holds) is a 400 that says the limit. The
model runs in the scheduler's own thread; after every step the thread posts that step's tokens back to the
loop, which turns them into text (``smml_lib.serving.text``: stop strings are never leaked), stream chunks and
metrics (``smml_lib.serving.metrics``). A client that disconnects cancels its sequences.

Shutdown is a **drain** (``drain``): new requests get 503, waiting sequences end at once, running ones may
finish for ``drain_timeout_s``, and whatever is left ends with an OpenAI-shaped error (or an SSE error event
followed by ``[DONE]``); only then does the HTTP server close. The FastAPI app is ``smml_lib.serving.app``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
import uuid
from typing import Any

from smml_lib.models.loading import load_llama
from smml_lib.serving.api import ApiError, ChatCompletionRequest, CompletionRequest, check_no_ops
from smml_lib.serving.config import ServerConfig
from smml_lib.serving.kvbatch import Sequence
from smml_lib.serving.metrics import ServerMetrics
from smml_lib.serving.schedulers import Scheduler, make_scheduler
from smml_lib.serving.text import TextState

DISCONNECTED = object()  # put on a request's queue when its client hangs up


def sse(data: Any) -> bytes:
    """One server-sent event: ``data: <json or text>`` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


class PendingRequest:
    """One HTTP request: its sequences (one per prompt), their text, timing, and the queue the model thread feeds."""

    def __init__(self, body: Any, prompts: list[list[int]], max_tokens: list[int], service: "CompletionService",
                 t_arrival_s: float) -> None:
        self.body, self.service = body, service
        self.scheduler = service.schedulers[body.model]
        self.chat = isinstance(body, ChatCompletionRequest)
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.t_arrival_s = t_arrival_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.choices = [TextState(service.tokenizer, body.stops()) for _ in prompts]
        self.t_last_s = [0.0] * len(prompts)
        temperature = 1.0 if body.temperature is None else body.temperature
        self.seqs = [Sequence(p, n, temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p,
                              seed=body.seed, ignore_eos=body.ignore_eos, tag=(self, i))
                     for i, (p, n) in enumerate(zip(prompts, max_tokens))]

    @property
    def done(self) -> bool:
        return all(c.finish is not None for c in self.choices)

    def usage(self) -> dict[str, int]:
        prompt = sum(len(s.prompt_ids) for s in self.seqs)
        completion = sum(len(c.ids) for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None, final: bool = True) -> dict:
        kind = ("chat.completion" if final else "chat.completion.chunk") if self.chat else "text_completion"
        out = {"id": self.id, "object": kind, "created": self.created, "model": self.body.model, "choices": choices}
        return out if usage is None else {**out, "usage": usage}

    def choice(self, index: int, text: str, finish: str | None, stream: bool, first: bool = False) -> dict:
        if not self.chat:
            return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        if not stream:
            return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": finish}
        delta = {"role": "assistant", "content": text} if first else ({"content": text} if text or not finish else {})
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


class CompletionService:
    """The server's state: tokenizer, schedulers, metrics, and the glue between the event loop and model threads.

    ``schedulers`` maps served model names to schedulers; a request picks one with its ``model`` field. Usually
    there is one; a lab can serve the same weights under several names, each with its own batching policy.
    """

    def __init__(self, schedulers: dict[str, Scheduler], max_model_len: int, *, drain_timeout_s: float = 10.0) -> None:
        self.schedulers, self.max_model_len, self.drain_timeout_s = schedulers, max_model_len, drain_timeout_s
        self.model_name = next(iter(schedulers))  # the first is the default for /health
        self.scheduler = schedulers[self.model_name]
        self.tokenizer = self.scheduler.tokenizer
        self.vocab_size = int(self.scheduler.model.config.vocab_size)
        # no token decodes to more bytes than this: a prompt of B bytes has at least B / this many tokens
        self.max_token_bytes = max(len(self.tokenizer.convert_tokens_to_string([t]).encode())
                                   for t in self.tokenizer.get_vocab()) or 1
        self.metrics = ServerMetrics(lambda: {n: s.stats() for n, s in self.schedulers.items()})
        self.pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="smml-tokenize")
        self.draining = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the model threads; their events reach ``loop`` with one thread-safe call per step."""
        for sched in self.schedulers.values():
            sched.on_events = lambda events: loop.call_soon_threadsafe(self._dispatch, events)
            sched.start()

    def stop(self) -> None:
        for sched in self.schedulers.values():
            sched.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _dispatch(events: list) -> None:
        for seq, token, reason in events:
            request, index = seq.tag
            request.queue.put_nowait((index, token, reason))

    # ---- admission: cheap checks, then tokenizing in a worker thread ---------------------------------
    def _scheduler_for(self, body: Any) -> Scheduler:
        sched = self.schedulers.get(body.model)
        if sched is None:
            raise ApiError(404, f"The model {body.model!r} does not exist; this server serves "
                                f"{', '.join(map(repr, self.schedulers))} (see GET /v1/models).", "model",
                           "model_not_found")
        check_no_ops(body)
        return sched

    def _check_context(self, n_tokens: int, max_tokens: int | None, at_least: bool = False) -> None:
        if n_tokens + (max_tokens or 0) > self.max_model_len or n_tokens >= self.max_model_len:
            has = f"at least {n_tokens}" if at_least else str(n_tokens)
            raise ApiError(400, f"This model's maximum context length is {self.max_model_len} tokens; the prompt "
                                f"has {has} tokens and max_tokens is {max_tokens}. Shorten one.",
                           "max_tokens" if max_tokens and n_tokens < self.max_model_len else "prompt",
                           "context_length_exceeded")

    def _limits(self, prompts: list[list[int]], max_tokens: int | None, default: int | None) -> list[int]:
        out = []
        for ids in prompts:
            if not ids:
                raise ApiError(400, "a prompt has no tokens", "prompt")
            if min(ids) < 0 or max(ids) >= self.vocab_size:
                raise ApiError(400, f"token ids must be in [0, {self.vocab_size})", "prompt")
            self._check_context(len(ids), max_tokens)
            out.append(max_tokens or default or self.max_model_len - len(ids))
        return out

    def _check_count(self, sched: Scheduler, n: int) -> None:
        if n > max(sched.max_queue, 1):
            raise ApiError(400, f"{n} prompts in one request; this server queues at most {sched.max_queue} "
                                "sequences, so it takes at most that many prompts per request", "prompt")

    async def prepare(self, body: CompletionRequest, t_arrival_s: float) -> PendingRequest:
        """Validate ``POST /v1/completions`` beyond the schema and tokenize off the loop; raises ``ApiError``."""
        sched = self._scheduler_for(body)
        raw = [body.prompt] if isinstance(body.prompt, str) or (body.prompt and isinstance(body.prompt[0], int)) \
            else body.prompt
        if not raw:
            raise ApiError(400, "prompt is an empty list", "prompt")
        self._check_count(sched, len(raw))
        for p in raw:  # the cheap bound first: no tokenizing of a prompt that cannot fit
            n = len(p) if not isinstance(p, str) else -(-len(p.encode()) // self.max_token_bytes)
            self._check_context(n, body.max_tokens, at_least=isinstance(p, str))
        texts = [p for p in raw if isinstance(p, str)]
        encoded = iter(await asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: self.tokenizer(texts).input_ids) if texts else [])
        prompts = [next(encoded) if isinstance(p, str) else list(p) for p in raw]
        return PendingRequest(body, prompts, self._limits(prompts, body.max_tokens, 16), self, t_arrival_s)

    async def prepare_chat(self, body: ChatCompletionRequest, t_arrival_s: float) -> PendingRequest:
        """Validate ``POST /v1/chat/completions`` and render the chat template off the loop."""
        self._scheduler_for(body)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ApiError(400, "this model's tokenizer has no chat template (a base model?): serve an Instruct "
                                "model, or use /v1/completions", "messages")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        limit = body.token_limit()
        self._check_context(-(-sum(len(m["content"].encode()) for m in messages) // self.max_token_bytes), limit,
                            at_least=True)
        ids = await asyncio.get_running_loop().run_in_executor(self.pool, lambda: list(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)))
        return PendingRequest(body, [ids], self._limits([ids], limit, None), self, t_arrival_s)

    def submit(self, request: PendingRequest) -> None:
        """Queue the request's sequences: 503 while draining, 429 (``Retry-After``) when the queue is full now."""
        s, name = request.scheduler, request.body.model
        if self.draining:
            raise ApiError(503, "the server is shutting down; retry on another replica", kind="server_error",
                           code="shutting_down")
        if not s.alive:
            raise ApiError(503, "the model thread is not running", kind="server_error")
        if not s.submit(request.seqs):
            self.metrics.rejections.labels(name).inc(len(request.seqs))
            raise ApiError(429, f"Server busy: {len(s.waiting)} sequences already wait for {s.max_batch} slots "
                                f"(queue limit {s.max_queue}). Retry later.", kind="rate_limit_exceeded",
                           code="queue_full", headers={"Retry-After": "1"})
        self.metrics.prompt_tokens.labels(name).inc(sum(len(q.prompt_ids) for q in request.seqs))

    def release(self, request: PendingRequest, reason: str) -> None:
        for seq, choice in zip(request.seqs, request.choices):
            if choice.finish is None or seq.finish_reason is None:
                request.scheduler.cancel(seq, reason)

    # ---- results: model-thread events -> text, chunks and metrics -------------------------------------
    def apply(self, request: PendingRequest, event: tuple) -> tuple[int, str, str | None] | None:
        """Fold one model-thread event into the request's text; None for a token that arrived after a stop."""
        index, token, reason = event
        choice, m, name = request.choices[index], self.metrics, request.body.model
        if choice.finish is not None:
            return None  # already ended by a stop string: late tokens are dropped
        if reason in ("error", "abort"):
            seq = request.seqs[index]
            raise ApiError(500 if reason == "error" else 503, seq.error or "the server is shutting down",
                           kind="server_error", code=None if reason == "error" else "shutting_down")
        now = time.perf_counter()
        if token is not None:
            m.generation_tokens.labels(name).inc()
            if choice.ids:
                m.itl.labels(name).observe(now - request.t_last_s[index])
            elif not request.body.stream:  # streamed: observed once the first chunk is on its way (``stream``)
                m.ttft.labels(name).observe(now - request.t_arrival_s)
            request.t_last_s[index] = now
        delta = choice.add(token, reason)
        if choice.finish == "stop" and reason is None:  # a stop string matched: free the slot now
            request.scheduler.cancel(request.seqs[index], "stop")
        if choice.finish is not None:
            m.e2e.labels(name).observe(now - request.t_arrival_s)
        return index, delta, choice.finish

    async def complete(self, request: PendingRequest, disconnected: asyncio.Future) -> dict[str, Any]:
        """Wait for every choice to finish (non-streaming), cancelling if the client disconnects."""
        try:
            while not request.done:
                event = await request.queue.get()
                if event is DISCONNECTED:
                    raise ApiError(499, "client disconnected")
                self.apply(request, event)
        except BaseException:  # disconnect, model error, server shutdown: free every slot of this request
            self.release(request, "disconnected")
            raise
        finally:
            disconnected.cancel()
        choices = [request.choice(i, c.text, c.finish, False) for i, c in enumerate(request.choices)]
        return request.chunk(choices, request.usage())

    async def stream(self, request: PendingRequest) -> Any:
        """Server-sent events: a chunk per generated token, a final chunk per choice, then ``[DONE]``.

        Every way out ends with ``[DONE]``: a model error or the server's shutdown sends an OpenAI-shaped error
        event first, so a client can tell a cut stream from a finished one.
        """
        started, outcome = [False] * len(request.choices), "disconnected"
        try:
            while not request.done:
                event = await request.queue.get()
                try:
                    applied = self.apply(request, event)
                except ApiError as exc:
                    outcome = "aborted" if exc.status == 503 else "server_error"
                    yield sse(exc.body())
                    break
                if applied is not None:
                    index, delta, finish = applied
                    yield sse(request.chunk([request.choice(index, delta, finish, True, not started[index])],
                                            final=False))
                    if not started[index] and request.choices[index].ids:  # the client's clock stops about now
                        self.metrics.ttft.labels(request.body.model).observe(time.perf_counter() - request.t_arrival_s)
                    started[index] = True
            else:
                opts = request.body.stream_options
                if opts is not None and opts.include_usage:
                    yield sse(request.chunk([], request.usage(), final=False))
                outcome = "ok"
            yield sse("[DONE]")
        finally:  # normal end, client gone (the response task is cancelled), or server shutdown
            self.release(request, "disconnected")
            endpoint = "chat" if request.chat else "completions"
            self.metrics.requests.labels(request.body.model, endpoint, outcome).inc()

    async def drain(self) -> None:
        """Stop accepting (503), end waiting sequences, give running ones ``drain_timeout_s``, then end the rest."""
        self.draining = True
        for sched in self.schedulers.values():
            sched.abort_waiting()
        deadline = time.perf_counter() + self.drain_timeout_s
        while time.perf_counter() < deadline and any(s.stats()["running"] for s in self.schedulers.values()):
            await asyncio.sleep(0.05)
        for sched in self.schedulers.values():
            sched.abort_running()
        await asyncio.sleep(0.2)  # the loop delivers the abort events: shaped errors and [DONE] reach the clients


def build_service(config: ServerConfig) -> CompletionService:
    """Load the model once and wrap it in one scheduler per served name and a ``CompletionService`` (not started).

    ``config.variants`` serves the same weights under several names, each with its own batching (one copy of
    the weights in memory): how Lab 03-4 compares batch-1, static and continuous batching on one server.
    """
    model, tokenizer = load_llama(config.model_id, dtype=config.dtype, device=config.device)
    limit = int(getattr(model.config, "max_position_embeddings", 4096))
    schedulers = {name: make_scheduler(batching, model, tokenizer) for name, batching in config.schedulers.items()}
    return CompletionService(schedulers, min(limit, config.max_model_len or 4096),
                             drain_timeout_s=config.drain_timeout_s)
