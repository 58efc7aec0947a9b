"""Typed errors and the one place that turns them into HTTP responses.

Every error a client can see is a ``CortexError`` subclass carrying its HTTP status and the type
names both dialects use. ``openai_body`` / ``anthropic_body`` render the two envelopes, so a client
never gets a body it cannot parse, whichever component raised.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec


class ConfigError(Exception):
    """A config file is invalid. The message is the single line shown to the operator."""


class CortexError(Exception):
    status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "server_error"
    anthropic_type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after_s = retry_after_s


class InvalidRequest(CortexError):
    status = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class Unauthorized(CortexError):
    status = 401
    openai_type = "invalid_request_error"
    anthropic_type = "authentication_error"
    default_code = "invalid_api_key"


class Forbidden(CortexError):
    status = 403
    openai_type = "invalid_request_error"
    anthropic_type = "permission_error"


class NotFound(CortexError):
    status = 404
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class ModelNotLoaded(ModelNotFound):
    """The model exists in no resident form on this neuron."""


class MethodNotAllowed(CortexError):
    """A route that exists, asked with another method (``GET /v1/chat/completions``)."""

    status = 405
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    default_code = "method_not_allowed"

    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed


class Conflict(CortexError):
    status = 409
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    default_code = "conflict"


class RequestTimeout(CortexError):
    """The client did not send its request in time (a trickled body)."""

    status = 408
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    default_code = "request_timeout"


class PayloadTooLarge(CortexError):
    status = 413
    openai_type = "invalid_request_error"
    anthropic_type = "request_too_large"


class Overloaded(CortexError):
    """Too much work queued; clients should retry (Retry-After says when)."""

    status = 429
    openai_type = "rate_limit_error"
    anthropic_type = "overloaded_error"
    default_code = "overloaded"


class Unavailable(CortexError):
    """The request cannot be served now: no node, no harness, load failed or timed out."""

    status = 503
    openai_type = "server_error"
    anthropic_type = "overloaded_error"
    default_code = "unavailable"


class NoHarness(Unavailable):
    default_code = "no_harness"


class InsufficientMemory(CortexError):
    status = 507
    openai_type = "server_error"
    anthropic_type = "api_error"
    default_code = "insufficient_memory"


class UpstreamError(CortexError):
    status = 502
    openai_type = "server_error"
    anthropic_type = "api_error"
    default_code = "upstream_error"


class InternalError(CortexError):
    status = 500


# --------------------------------------------------------------------------- envelopes


class OpenAIErrorDetail(msgspec.Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(msgspec.Struct):
    error: OpenAIErrorDetail


class AnthropicErrorDetail(msgspec.Struct):
    type: str
    message: str


class AnthropicErrorBody(msgspec.Struct, tag_field="type", tag="error"):
    error: AnthropicErrorDetail


_encoder = msgspec.json.Encoder()

# Anthropic signals overload with 529, not 503/429; its SDKs retry on it.
_ANTHROPIC_STATUS = {429: 429, 503: 529}


def openai_body(err: CortexError) -> bytes:
    detail = OpenAIErrorDetail(err.message, err.openai_type, err.param, err.code)
    return _encoder.encode(OpenAIErrorBody(detail))


def anthropic_body(err: CortexError) -> bytes:
    return _encoder.encode(
        AnthropicErrorBody(AnthropicErrorDetail(err.anthropic_type, err.message))
    )


def anthropic_status(err: CortexError) -> int:
    return _ANTHROPIC_STATUS.get(err.status, err.status)


def from_status(status: int, message: str, code: str | None = None) -> CortexError:
    """Rebuild a typed error from an upstream's status (the gateway relaying a neuron's error)."""
    cls: type[CortexError] = {
        400: InvalidRequest,
        401: Unauthorized,
        403: Forbidden,
        404: ModelNotFound,
        409: Conflict,
        413: PayloadTooLarge,
        429: Overloaded,
        503: Unavailable,
        507: InsufficientMemory,
    }.get(status, UpstreamError)
    if code == "context_length_exceeded":
        cls = ContextLengthExceeded
    return cls(message, code=code)


def from_event(detail: dict[str, object]) -> CortexError:
    """The typed error a node's stream ended in: an OpenAI error event, which carries no status,
    read by its code, then its type. Never an ``UpstreamError``: the node answered, so the
    failure is the request's, not the node's (which would mark the node suspect)."""
    message = str(detail.get("message") or "upstream error")
    code = detail.get("code")
    code = code if isinstance(code, str) else None
    by_code: dict[str | None, type[CortexError]] = {
        cls.default_code: cls
        for cls in (ContextLengthExceeded, Overloaded, Unavailable, InsufficientMemory)
    }
    cls = by_code.get(code)
    if cls is None:
        invalid = detail.get("type") == InvalidRequest.openai_type
        cls = InvalidRequest if invalid else InternalError
    return cls(message, code=code, param=_text(detail.get("param")))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def from_body(status: int, raw: bytes) -> CortexError:
    """The typed error an upstream answered: its OpenAI envelope's message, code and param (the
    field a client should fix), or the start of whatever else it sent."""
    message, code, param = raw.decode(errors="replace")[:500], None, None
    try:
        detail = msgspec.json.decode(raw)["error"]
        message, code = str(detail["message"]), detail.get("code")
        param = detail.get("param") if isinstance(detail.get("param"), str) else None
    except (msgspec.DecodeError, RecursionError, KeyError, TypeError, AttributeError):
        pass
    err = from_status(status, message, code)
    err.param = param
    return err
