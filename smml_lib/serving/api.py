"""What the endpoints accept, and how the server says no: OpenAI's request bodies and error shape.

``CompletionRequest`` (``POST /v1/completions``) and ``ChatCompletionRequest`` (``POST /v1/chat/completions``)
are the bodies as pydantic models: OpenAI's fields, plus vLLM's ``ignore_eos``. As in vLLM, an unknown field
is ignored (the server logs its name once) rather than refused: clients of the OpenAI ecosystem send fields
this server has never heard of. Fields that clients send but this server does not implement (``n``,
``logprobs``, penalties, ...) are accepted at their no-op values (``NO_OP``: ``best_of: 1``, ``logit_bias: {}``,
``logprobs: null``...) and refused otherwise, with a reason.

``ApiError`` answers in OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape (every error of this
server, 404 and 405 included, uses it), and ``validation_message`` turns pydantic's errors into one readable
reason for the 400 answer. Used by ``smml_lib.serving.server``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("smml.serving")
_SEEN_UNKNOWN: set[str] = set()  # unknown field names already logged (once each, like vLLM)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """The fields both endpoints share. ``max_tokens: null`` means the endpoint's default."""

    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = False
    user: str | None = None
    n: int | None = 1
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Sampling):
    """The body of ``POST /v1/completions`` (OpenAI's fields; ``ignore_eos`` is vLLM's extension)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = None
    echo: bool | None = False
    logprobs: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The content as one string (OpenAI also allows a list of ``{"type": "text", "text": ...}`` parts)."""
        if isinstance(self.content, list):
            if any(part.get("type") != "text" for part in self.content):
                raise ApiError(400, "only text content parts are supported by this server", "messages")
            return "".join(str(part.get("text", "")) for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    """The body of ``POST /v1/chat/completions``: ``messages`` instead of ``prompt``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


NO_OP: dict[str, tuple[Any, ...]] = {
    "n": (1, None), "best_of": (1, None), "echo": (False, None), "logprobs": (None, False, 0),
    "top_logprobs": (None, 0), "suffix": (None, ""), "presence_penalty": (0.0, None), "frequency_penalty": (0.0, None),
    "logit_bias": (None, {}),
}
"""Fields accepted only at these values (each means "off"); anything else is refused with a 400."""


def check_no_ops(body: BaseModel) -> None:
    """Refuse what the server would silently not do; log unknown fields once (they are ignored)."""
    for name, allowed in NO_OP.items():
        if name in type(body).model_fields and getattr(body, name) not in allowed:
            raise ApiError(400, f"{name}={getattr(body, name)!r} is not supported by this server "
                                f"(leave it out, or use {allowed[0]!r})", name)
    if isinstance(body, _Sampling) and any(s == "" for s in body.stops()):
        raise ApiError(400, "stop strings must not be empty (an empty stop would match at once)", "stop")
    for name in body.model_extra or {}:
        if name not in _SEEN_UNKNOWN:
            _SEEN_UNKNOWN.add(name)
            log.warning("ignoring unknown request field %r (logged once)", name)


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def body_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()

    def response(self) -> Any:
        from fastapi.responses import JSONResponse  # deferred: optional extra [serve]

        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def http_error(status: int, detail: str, method: str, path: str) -> ApiError:
    """Starlette's own 404/405/... in OpenAI's shape, with a message that says what exists."""
    if status == 404:
        return ApiError(404, f"{method} {path}: no such endpoint; this server has POST /v1/completions, POST "
                             "/v1/chat/completions, GET /v1/models, GET /v1/models/{id}, GET /health, GET /metrics",
                        code="not_found")
    if status == 405:
        return ApiError(405, f"{method} is not allowed on {path}", code="method_not_allowed")
    return ApiError(status, str(detail), kind="invalid_request_error" if status < 500 else "server_error")


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """Turn pydantic's errors into one readable reason (and the offending field) for a 400 answer."""
    err = errors[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    field = loc[0] if loc else None
    if err.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({err.get('ctx', {}).get('error', err['msg'])})", None
    if err.get("type") == "missing":
        return f"missing required field {field!r}" if field else "the request needs a JSON body", field
    if err.get("type") in ("model_type", "model_attributes_type", "dict_type") and not loc:
        return "the request body must be a JSON object", None
    if field == "prompt":
        return "prompt must be a string, a list of strings, a list of token ids, or a list of token-id lists", field
    return f"{'.'.join(loc) or 'body'}: {err['msg']}", field
