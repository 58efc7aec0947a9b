"""Every error renders as a body its client can parse, with the status each dialect expects."""

from __future__ import annotations

import msgspec
import pytest

from cortex import errors

ALL = [
    errors.InvalidRequest("bad", param="temperature"),
    errors.ContextLengthExceeded("too long"),
    errors.Unauthorized("no key"),
    errors.ModelNotFound("no such model"),
    errors.Conflict("other spec"),
    errors.Overloaded("busy", retry_after_s=3),
    errors.Unavailable("no node"),
    errors.NoHarness("no harness"),
    errors.InsufficientMemory("too big"),
    errors.UpstreamError("neuron died"),
    errors.InternalError("oops"),
]


@pytest.mark.parametrize("err", ALL, ids=lambda e: type(e).__name__)
def test_openai_envelope(err: errors.CortexError) -> None:
    body = msgspec.json.decode(errors.openai_body(err))
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == err.message


@pytest.mark.parametrize("err", ALL, ids=lambda e: type(e).__name__)
def test_anthropic_envelope(err: errors.CortexError) -> None:
    body = msgspec.json.decode(errors.anthropic_body(err))
    assert body["type"] == "error"
    assert body["error"]["type"] in {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
    }


def test_statuses() -> None:
    assert errors.ContextLengthExceeded("x").code == "context_length_exceeded"
    assert errors.ModelNotFound("x").code == "model_not_found"
    assert errors.anthropic_status(errors.Unavailable("x")) == 529
    assert errors.anthropic_status(errors.InvalidRequest("x")) == 400
    assert errors.InsufficientMemory("x").status == 507


def test_from_status_rebuilds_typed_errors() -> None:
    assert isinstance(errors.from_status(404, "m"), errors.ModelNotFound)
    assert isinstance(
        errors.from_status(400, "m", "context_length_exceeded"), errors.ContextLengthExceeded
    )
    assert isinstance(errors.from_status(418, "m"), errors.UpstreamError)


@pytest.mark.parametrize(
    ("raw", "kind", "message", "code"),
    [
        (
            b'{"error":{"message":"bad","code":"context_length_exceeded"}}',
            errors.ContextLengthExceeded,
            "bad",
            "context_length_exceeded",
        ),
        (b'{"error":"flat"}', errors.InvalidRequest, '{"error":"flat"}', None),
        (b"<html>oops</html>", errors.InvalidRequest, "<html>oops</html>", None),
        (b'{"error":' * 5000, errors.InvalidRequest, '{"error":' * 55 + '{"err', None),
    ],
)
def test_an_upstream_error_body_is_read_whatever_it_holds(
    raw: bytes, kind: type[errors.CortexError], message: str, code: str | None
) -> None:
    err = errors.from_body(400, raw)
    assert type(err) is kind and err.message == message and err.code == code


@pytest.mark.parametrize("err", ALL, ids=lambda e: type(e).__name__)
def test_a_node_error_event_is_read_back_as_the_node_sent_it_never_as_a_node_fault(
    err: errors.CortexError,
) -> None:
    """A stream's error event (OpenAI envelope, no status) read back at the gateway: the same
    kind where its code or type says it, else an internal error; never an UpstreamError,
    which would mark a node suspect for one request's failure."""
    detail = msgspec.json.decode(errors.openai_body(err))["error"]
    back = errors.from_event(detail)
    assert not isinstance(back, errors.UpstreamError)
    assert (back.message, back.code, back.param) == (err.message, err.code, err.param)
    assert back.openai_type == err.openai_type or isinstance(err, errors.UpstreamError)
    if isinstance(err, (errors.ContextLengthExceeded, errors.Overloaded, errors.Unavailable)):
        assert type(back) is type(err) or isinstance(err, errors.NoHarness)


def test_an_error_event_without_an_envelope_is_still_an_error() -> None:
    assert errors.from_event({}).message == "upstream error"
    assert errors.from_event({"message": "x", "code": 7}).code is None
