"""The HTTP face of the completion service: FastAPI routes, the body limit, errors in OpenAI's shape.

Endpoints: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (OpenAI's request and response shapes;
``stream: true`` for server-sent events ending in ``data: [DONE]``), ``GET /v1/models``, ``GET /v1/models/{id}``,
``GET /health`` (queue, batch and memory figures) and ``GET /metrics`` (Prometheus text format).

In front of the routes sits one small ASGI middleware, ``guard``, which does what must happen before a
body is parsed: it notes the arrival time (the server's TTFT starts there), answers 503 while the server
drains, and reads the body under a byte limit: a body over ``max_body_bytes`` gets 413 as soon as its
``Content-Length`` says so, unread, with ``Connection: close`` (so uvicorn drops the rest unparsed), or as
soon as the bytes of a chunked body pass the limit (the rest is read and thrown away in small chunks, so the
client receives the answer). No other request waits for it. The routes
parse JSON themselves: a wrong content type, bad JSON and a schema error each get a 400 that says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import psutil
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from smml_lib.serving.api import ApiError, ChatCompletionRequest, CompletionRequest, http_error, validation_message
from smml_lib.serving.config import ServerConfig
from smml_lib.serving.metrics import CONTENT_TYPE
from smml_lib.serving.server import DISCONNECTED, CompletionService

DISCARD_LIMIT_BYTES = 256 * 2**20  # an oversized body is read and dropped up to this much, then the connection closes
ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}  # path -> the metrics' endpoint label
UNKNOWN_MODEL = "unknown"  # the metrics' model label before a body names a served model (bounds the label's values)


def outcome_of(exc: ApiError) -> str:
    """The ``smml_requests_total`` outcome of an error answer."""
    fallback = "client_error" if exc.status < 500 else "server_error"
    return {429: "rejected", 499: "disconnected", 503: "aborted"}.get(exc.status, fallback)


async def _send_error(send: Any, exc: ApiError, close: bool = False) -> None:
    """Send ``exc`` as the answer; ``close``: and close the connection after it (uvicorn closes only then)."""
    body = exc.body_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def guard(app: Any, service: CompletionService, max_body_bytes: int) -> Any:
    """ASGI middleware: arrival time, 503 while draining, and the request body read under ``max_body_bytes``."""

    async def refuse(send: Any, scope: dict, exc: ApiError, close: bool = False) -> None:
        if scope["path"] in ENDPOINTS:  # counted: refused before the body could name a model
            service.metrics.requests.labels(UNKNOWN_MODEL, ENDPOINTS[scope["path"]], outcome_of(exc)).inc()
        await _send_error(send, exc, close)

    async def middleware(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        scope.setdefault("state", {})["t_arrival_s"] = time.perf_counter()
        if service.draining and scope["path"].startswith("/v1/") and scope["method"] == "POST":
            return await refuse(send, scope, ApiError(503, "the server is shutting down; retry on another replica",
                                                      kind="server_error", code="shutting_down"))
        declared = dict(scope.get("headers", [])).get(b"content-length")
        too_big = ApiError(413, f"the request body is larger than this server's limit of {max_body_bytes} bytes "
                                "(--max-body-bytes)", code="request_too_large")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            # Unread, and the connection closed after the answer. Without "connection: close" uvicorn keeps the
            # connection alive and parses the unread bytes on the event loop: 10 MB bodies sent back to back
            # stretched a concurrent stream's largest token gap 4.7x (a sink that closes: 1.5x).
            return await refuse(send, scope, too_big, close=True)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > max_body_bytes:
                if more:
                    await _discard(receive, DISCARD_LIMIT_BYTES)
                return await refuse(send, scope, too_big)
            chunks.append(chunk)
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then: the client's disconnect, when it comes

        return await app(scope, replay, send)

    return middleware


async def _discard(receive: Any, limit_bytes: int) -> None:
    """Read and drop a body (up to ``limit_bytes``), so the client can read the answer to it."""
    seen = 0
    while seen <= min(limit_bytes, DISCARD_LIMIT_BYTES):
        message = await receive()
        seen += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def parse_body(request: Request, model: type) -> Any:
    """The JSON body as ``model``; 400 with the reason for a wrong content type, bad JSON or a schema error."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise ApiError(400, f"the request body must be JSON with 'Content-Type: application/json' (got "
                            f"{ctype or 'no content type'!r})", code="unsupported_content_type")
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, *validation_message(list(exc.errors()))) from None


async def _watch_disconnect(http_request: Request, queue: asyncio.Queue) -> None:
    """Wait for the ASGI ``http.disconnect`` message (the body was read already) and report it on ``queue``."""
    while True:
        message = await http_request.receive()
        if message["type"] == "http.disconnect":
            queue.put_nowait(DISCONNECTED)
            return


def create_app(service: CompletionService, *, max_body_bytes: int = 2**20) -> Any:
    """The ASGI application around a ``CompletionService`` (the model threads start with the app)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        service.attach(asyncio.get_running_loop())
        yield
        service.stop()

    app = FastAPI(title="SMML Lab completion server", lifespan=lifespan)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return http_error(exc.status_code, str(exc.detail), request.method, request.url.path).response()

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    async def answer(request: Any, http_request: Request, endpoint: str) -> Any:
        name, outcome = request.body.model, "ok"
        try:
            service.submit(request)
            if request.body.stream:  # the stream counts its own outcome when it ends
                outcome = None
                return StreamingResponse(service.stream(request), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            watcher = asyncio.ensure_future(_watch_disconnect(http_request, request.queue))
            return await service.complete(request, watcher)
        except ApiError as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            if outcome is not None:
                service.metrics.requests.labels(name, endpoint, outcome).inc()

    async def prepared(http_request: Request, schema: type, prepare: Any, endpoint: str) -> Any:
        """Parse and validate; an error here (bad JSON, unknown model, never fits) is counted, then answered."""
        name = UNKNOWN_MODEL
        try:
            body = await parse_body(http_request, schema)
            name = body.model if body.model in service.schedulers else UNKNOWN_MODEL
            return await prepare(body, http_request.scope["state"]["t_arrival_s"])
        except ApiError as exc:
            service.metrics.requests.labels(name, endpoint, outcome_of(exc)).inc()
            raise

    @app.post("/v1/completions")
    async def completions(http_request: Request) -> Any:
        request = await prepared(http_request, CompletionRequest, service.prepare, "completions")
        return await answer(request, http_request, "completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(http_request: Request) -> Any:
        request = await prepared(http_request, ChatCompletionRequest, service.prepare_chat, "chat")
        return await answer(request, http_request, "chat")

    def card(name: str) -> dict[str, Any]:
        s = service.schedulers[name]
        return {"id": name, "object": "model", "created": 0, "owned_by": "smml", "max_model_len": service.max_model_len,
                "scheduler": s.name, "max_batch": s.max_batch}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card(name) for name in service.schedulers]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id not in service.schedulers:
            raise ApiError(404, f"The model {model_id!r} does not exist; this server serves "
                                f"{', '.join(map(repr, service.schedulers))}.", "model", "model_not_found")
        return card(model_id)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/health")
    async def health() -> Any:
        alive = all(s.alive for s in service.schedulers.values())
        status = "draining" if service.draining else ("ok" if alive else "a model thread stopped")
        body = {"status": status, "model": service.model_name,
                "rss_bytes": psutil.Process().memory_info().rss, **service.scheduler.stats()}
        if len(service.schedulers) > 1:
            body["models"] = {name: s.stats() for name, s in service.schedulers.items()}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    return guard(app, service, max_body_bytes)


def uvicorn_server(service: CompletionService, config: ServerConfig, on_started: Any = None) -> Any:
    """A uvicorn server whose first SIGTERM drains the service before uvicorn's own shutdown starts.

    uvicorn's own graceful shutdown waits ``timeout_graceful_shutdown`` and then *cancels* the requests still
    running (plain-text 500s, streams cut without ``[DONE]``). Draining first means that by the time uvicorn
    shuts down, every request has had its answer.
    """
    import uvicorn  # deferred: optional extra [serve]

    class _Server(uvicorn.Server):
        loop: Any = None
        drain: Any = None

        async def startup(self, sockets: Any = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().startup(sockets)
            if self.started and on_started is not None:
                on_started()

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.drain is not None or self.loop is None:  # a second signal, or before start-up: exit now
                return super().handle_exit(sig, frame)
            self.begin_shutdown()

        def begin_shutdown(self) -> None:
            """Drain, then exit (thread-safe; what SIGTERM does)."""
            if self.loop is None or self.loop.is_closed():
                self.should_exit = True
                return

            async def drain_then_exit() -> None:
                try:
                    await service.drain()
                finally:
                    self.should_exit = True

            def begin() -> None:
                if self.drain is None:
                    self.drain = asyncio.ensure_future(drain_then_exit())

            self.loop.call_soon_threadsafe(begin)

    app = create_app(service, max_body_bytes=config.body_limit_bytes(service.max_model_len))
    uv = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=1,
                        timeout_keep_alive=30)
    return _Server(uv)
