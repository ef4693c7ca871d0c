"""What ``POST /v1/completions`` accepts, and how it says no: OpenAI's request body and error shape.

``CompletionRequest`` is the body as a pydantic model: OpenAI's fields, plus vLLM's ``ignore_eos``; an unknown
field is refused rather than silently ignored. Fields that OpenAI clients send but this server does not
implement (``n``, ``logprobs``, penalties, ...) are accepted only at their defaults (``UNSUPPORTED``).
``ApiError`` answers in OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape, and
``validation_message`` turns pydantic's errors into one readable reason for the 400 answer.
Used by ``smml_lib.serving.server``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The body of ``POST /v1/completions`` (OpenAI's fields; ``ignore_eos`` is vLLM's extension)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = False
    user: str | None = None
    # accepted for compatibility with OpenAI clients, refused unless left at their defaults
    n: int = 1
    best_of: int | None = None
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def response(self) -> Any:
        from fastapi.responses import JSONResponse  # deferred: optional extra [serve]

        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """Turn pydantic's errors into one readable reason (and the offending field) for a 400 answer."""
    err = errors[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    field = loc[0] if loc else None
    if err.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({err.get('ctx', {}).get('error', err['msg'])})", None
    if err.get("type") == "extra_forbidden":
        return (f"unknown field {field!r}: /v1/completions takes model, prompt, max_tokens, temperature, top_p, "
                "stream, stream_options, stop, seed, ignore_eos, user"), field
    if err.get("type") == "missing":
        return f"missing required field {field!r}" if field else "the request needs a JSON body", field
    if field == "prompt":
        return "prompt must be a string, a list of strings, a list of token ids, or a list of token-id lists", field
    return f"{'.'.join(loc) or 'body'}: {err['msg']}", field


UNSUPPORTED = {"n": 1, "best_of": None, "echo": False, "logprobs": None, "suffix": None, "presence_penalty": 0.0,
               "frequency_penalty": 0.0, "logit_bias": None}
