"""An OpenAI-compatible completion server over a Llama: FastAPI + uvicorn in front, one model thread behind.

    smml serve --model tiny --scheduler continuous --max-batch 16 --port 8000
    curl -s 127.0.0.1:8000/v1/completions -H 'content-type: application/json' \\
         -d '{"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0}'

Endpoints: ``POST /v1/completions`` (OpenAI's request and response shape, ``stream: true`` for server-sent
events ending in ``data: [DONE]``), ``GET /v1/models``, ``GET /health`` (queue, batch and memory figures).

How a request flows: the event loop validates it (400 with a reason, 404 for an unknown model), tokenizes
the prompt and hands the sequences to the scheduler (``smml_lib.serving.schedulers``). A full queue answers 429 at
once, so overload shows up as fast refusals, not as timeouts. The model runs in the scheduler's own thread,
so the event loop never waits for a forward pass; after every step the thread posts that step's tokens back
to the loop, which turns them into text and into stream chunks. A client that disconnects cancels its
sequences, and their slots are free before the next decode step.

This module is the service and the app; running them (a subprocess or a thread, ``start_server`` for
notebooks, and the ``smml serve`` command) is ``smml_lib.serving.process``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import psutil
from fastapi import Request

from smml_lib.models.loading import load_llama
from smml_lib.serving.api import UNSUPPORTED, ApiError, CompletionRequest, validation_message
from smml_lib.serving.config import ServerConfig
from smml_lib.serving.kvbatch import Sequence
from smml_lib.serving.schedulers import Scheduler, make_scheduler

DISCONNECTED = object()  # put on a request's queue when its client hangs up


class _Choice:
    """Token ids -> text for one prompt, released as deltas, with stop strings applied.

    Decoding is incremental (the offsets trick of TGI and vLLM): each new token decodes a short window of
    ids, not the whole answer, and half of a multi-byte character is held back until it is complete.
    """

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.text = ""
        self.finish: str | None = None
        self._prefix = self._read = 0  # ids[_prefix:_read] were decoded already (context for the next one)

    def add(self, token: int | None, reason: str | None) -> str:
        if token is not None:
            self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix:self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix:], skip_special_tokens=True)
        delta = ""
        if len(after) > len(before) and (reason is not None or not after.endswith("\ufffd")):
            delta = after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        full = self.text + delta
        for stop in self.stops:
            at = full.find(stop, max(0, len(self.text) - len(stop) + 1))
            if at >= 0:
                full, reason = full[:at], "stop"
        delta, self.text = full[len(self.text):], full
        self.finish = reason
        return delta


class _Request:
    """One HTTP request: its sequences (one per prompt), their text state and the queue the model thread feeds."""

    def __init__(self, body: CompletionRequest, prompts: list[list[int]], tokenizer: Any, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.id = f"cmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.body = body
        self.queue: asyncio.Queue = asyncio.Queue()
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        self.choices = [_Choice(tokenizer, stops) for _ in prompts]
        self.seqs = [Sequence(p, body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                              seed=body.seed, ignore_eos=body.ignore_eos, tag=(self, i)) for i, p in enumerate(prompts)]

    @property
    def done(self) -> bool:
        return all(c.finish is not None for c in self.choices)

    def usage(self) -> dict[str, int]:
        prompt = sum(len(s.prompt_ids) for s in self.seqs)
        completion = sum(len(c.ids) for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        out = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.body.model,
               "choices": choices}
        return out if usage is None else {**out, "usage": usage}


def _choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


class CompletionService:
    """The server's state: tokenizer, schedulers, and the glue between the event loop and the model threads.

    ``schedulers`` maps served model names to schedulers; a request picks one with its ``model`` field. Usually
    there is one; a lab can serve the same weights under several names, each with its own batching policy.
    """

    def __init__(self, schedulers: dict[str, Scheduler], max_model_len: int) -> None:
        self.schedulers, self.max_model_len = schedulers, max_model_len
        self.model_name = next(iter(schedulers))  # the first is the default for /health
        self.scheduler = schedulers[self.model_name]
        self.tokenizer = self.scheduler.tokenizer
        self.vocab_size = int(self.scheduler.model.config.vocab_size)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the model threads; their events reach ``loop`` with one thread-safe call per step."""
        for sched in self.schedulers.values():
            sched.on_events = lambda events: loop.call_soon_threadsafe(self._dispatch, events)
            sched.start()

    def stop(self) -> None:
        for sched in self.schedulers.values():
            sched.stop()

    @staticmethod
    def _dispatch(events: list) -> None:
        for seq, token, reason in events:
            request, index = seq.tag
            request.queue.put_nowait((index, token, reason))

    def prepare(self, body: CompletionRequest) -> _Request:
        """Validate beyond the schema and tokenize; raises ``ApiError`` (400/404)."""
        sched = self.schedulers.get(body.model)
        if sched is None:
            raise ApiError(404, f"The model {body.model!r} does not exist; this server serves "
                                f"{', '.join(map(repr, self.schedulers))} (see GET /v1/models).", "model",
                           "model_not_found")
        for name, default in UNSUPPORTED.items():
            if getattr(body, name) != default:
                raise ApiError(400, f"{name}={getattr(body, name)!r} is not supported by this server "
                                    f"(leave it at {default!r})", name)
        raw = [body.prompt] if isinstance(body.prompt, str) or (body.prompt and isinstance(body.prompt[0], int)) \
            else body.prompt
        if not raw:
            raise ApiError(400, "prompt is an empty list", "prompt")
        capacity = sched.max_batch + sched.max_queue
        if len(raw) > capacity:
            raise ApiError(400, f"{len(raw)} prompts in one request; this server takes at most {capacity}", "prompt")
        prompts = [self.tokenizer(p).input_ids if isinstance(p, str) else list(p) for p in raw]
        for ids in prompts:
            if not ids:
                raise ApiError(400, "a prompt has no tokens", "prompt")
            if min(ids) < 0 or max(ids) >= self.vocab_size:
                raise ApiError(400, f"token ids must be in [0, {self.vocab_size})", "prompt")
            if len(ids) + body.max_tokens > self.max_model_len:
                raise ApiError(400, f"This model's maximum context length is {self.max_model_len} tokens; the prompt "
                                    f"has {len(ids)} tokens and max_tokens is {body.max_tokens}. Shorten one.",
                               "max_tokens")
        return _Request(body, prompts, self.tokenizer, sched)

    def submit(self, request: _Request) -> None:
        s = request.scheduler
        if not s.alive:
            raise ApiError(503, "the model thread is not running", kind="server_error")
        if not s.submit(request.seqs):
            raise ApiError(429, f"Server busy: {len(s.waiting)} sequences already wait for {s.max_batch} slots "
                                f"(queue limit {s.max_queue}). Retry later.", kind="rate_limit_exceeded",
                           code="queue_full", headers={"Retry-After": "1"})

    def release(self, request: _Request, reason: str) -> None:
        for seq, choice in zip(request.seqs, request.choices):
            if choice.finish is None or seq.finish_reason is None:
                request.scheduler.cancel(seq, reason)

    def _apply(self, request: _Request, event: tuple) -> tuple[int, str, str | None] | None:
        """Fold one model-thread event into the request's text; None for a token that arrived after a stop."""
        index, token, reason = event
        choice = request.choices[index]
        if choice.finish is not None:
            return None  # already ended by a stop string: late tokens are dropped
        if reason in ("error", "abort"):
            seq = request.seqs[index]
            raise ApiError(500 if reason == "error" else 503, seq.error or "the server is shutting down",
                           kind="server_error")
        delta = choice.add(token, reason)
        if choice.finish == "stop" and reason is None:  # a stop string matched: free the slot now
            request.scheduler.cancel(request.seqs[index], "stop")
        return index, delta, choice.finish

    async def complete(self, request: _Request, http_request: Any) -> dict[str, Any]:
        """Wait for every choice to finish (non-streaming), cancelling if the client disconnects."""
        watcher = asyncio.ensure_future(_watch_disconnect(http_request, request.queue))
        try:
            while not request.done:
                event = await request.queue.get()
                if event is DISCONNECTED:
                    raise ApiError(499, "client disconnected")
                self._apply(request, event)
        except BaseException:  # disconnect, model error, server shutdown: free every slot of this request
            self.release(request, "disconnected")
            raise
        finally:
            watcher.cancel()
        choices = [_choice(i, c.text, c.finish) for i, c in enumerate(request.choices)]
        return request.chunk(choices, request.usage())

    async def stream(self, request: _Request) -> Any:
        """Server-sent events: one chunk per generated token, a final chunk per choice, then ``[DONE]``."""
        from fastapi.sse import format_sse_event  # deferred: optional extra [serve]

        def sse(data: Any) -> bytes:
            return format_sse_event(data_str=data if isinstance(data, str) else json.dumps(data))

        try:
            while not request.done:
                event = await request.queue.get()
                try:
                    applied = self._apply(request, event)
                except ApiError as exc:
                    yield sse({"error": {"message": exc.message, "type": exc.kind, "param": None, "code": None}})
                    return
                if applied is not None:
                    index, delta, finish = applied
                    yield sse(request.chunk([_choice(index, delta, finish)]))
            opts = request.body.stream_options
            if opts is not None and opts.include_usage:
                yield sse(request.chunk([], request.usage()))
            yield sse("[DONE]")
        finally:  # normal end, client gone (the response task is cancelled), or server shutdown
            self.release(request, "disconnected")


async def _watch_disconnect(http_request: Any, queue: asyncio.Queue) -> None:
    """Wait for the ASGI ``http.disconnect`` message (the body was read already) and report it on ``queue``."""
    while True:
        message = await http_request.receive()
        if message["type"] == "http.disconnect":
            queue.put_nowait(DISCONNECTED)
            return


def create_app(service: CompletionService) -> Any:
    """The FastAPI application around a ``CompletionService`` (the model thread starts with the app)."""
    from fastapi import FastAPI  # deferred: optional extra [serve]
    from fastapi.exceptions import RequestValidationError  # deferred: optional extra [serve]
    from fastapi.responses import JSONResponse, StreamingResponse  # deferred: optional extra [serve]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        service.attach(asyncio.get_running_loop())
        yield
        service.stop()

    app = FastAPI(title="SMML Lab completion server", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = validation_message(list(exc.errors()))
        return ApiError(400, message, field).response()

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http_request: Request) -> Any:
        request = service.prepare(body)
        service.submit(request)
        if body.stream:
            return StreamingResponse(service.stream(request), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await service.complete(request, http_request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "smml",
                                            "max_model_len": service.max_model_len, "scheduler": s.name,
                                            "max_batch": s.max_batch} for name, s in service.schedulers.items()]}

    @app.get("/health")
    async def health() -> Any:
        alive = all(s.alive for s in service.schedulers.values())
        body = {"status": "ok" if alive else "a model thread stopped", "model": service.model_name,
                "rss_bytes": psutil.Process().memory_info().rss, **service.scheduler.stats()}
        if len(service.schedulers) > 1:
            body["models"] = {name: s.stats() for name, s in service.schedulers.items()}
        return JSONResponse(body, status_code=200 if alive else 503)

    return app


def build_service(config: ServerConfig) -> CompletionService:
    """Load the model once and wrap it in one scheduler per served name and a ``CompletionService`` (not started).

    ``config.variants`` serves the same weights under several names, each with its own batching (one copy of
    the weights in memory): how Lab 03-4 compares batch-1, static and continuous batching on one server.
    """
    model, tokenizer = load_llama(config.model_id, dtype=config.dtype, device=config.device)
    limit = int(getattr(model.config, "max_position_embeddings", 4096))
    schedulers = {name: make_scheduler(batching, model, tokenizer) for name, batching in config.schedulers.items()}
    return CompletionService(schedulers, min(limit, config.max_model_len or 4096))
