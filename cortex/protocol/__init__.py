"""Every wire shape, one module per API family; ``decode`` is the single validating entry
(``convert`` the same for a body a dialect had to pre-fill), ``encode_events`` the one encoder
of named SSE events."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, TypeVar

import msgspec

from cortex import sse
from cortex.errors import InvalidRequest
from cortex.protocol.bounds import MAX_NESTING
from cortex.validation import MISSING, split_error, value_at

T = TypeVar("T")
_GOT_TYPE = re.compile(r", got `[^`]*`$")

_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_encoder = msgspec.json.Encoder()


def decode(body: bytes, kind: type[T]) -> T:
    """Decode and validate a request body; errors name the field, the bound and the value."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(body)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        raise _rejection(str(exc), body) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest(
            f"Request body nests too deeply (free-form JSON may nest {MAX_NESTING} levels)."
        ) from None


def convert(data: Any, kind: type[T], body: bytes) -> T:
    """``decode`` for a body already parsed (a dialect that fills in defaults msgspec cannot
    express, such as a missing union tag); ``body``, the raw bytes, is quoted in errors."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise _rejection(str(exc), body) from None


def encode_events(events: Iterable[msgspec.Struct]) -> bytes:
    """Server-sent events ``event: TYPE`` / ``data: JSON`` for Structs tagged by their type
    (the Anthropic and Responses streams both name each event so)."""
    return b"".join(
        sse.frame(_encoder.encode(e), event=str(e.__struct_config__.tag).encode()) for e in events
    )


def _rejection(text: str, body: bytes) -> InvalidRequest:
    text, param = split_error(text)
    text = text.replace("Expected", "expected")
    if "Object missing required field" in text:
        field = text.split("`")[1] if "`" in text else "?"
        where = f"{param}.{field}" if param else field
        return InvalidRequest(f"Missing required parameter: '{where}'.", param=where)
    if param is None:
        return InvalidRequest(f"Invalid request body: {text}")
    got = _value_at(body, param)
    if got is not MISSING and not text.startswith("Invalid"):
        # msgspec may already say which type it got ("expected `str`, got `int`"): the value
        # replaces that, so the message says "got" once.
        text = _GOT_TYPE.sub("", text) + f", got {_short(got)}"
    return InvalidRequest(f"Invalid value for '{param}': {text}.", param=param)


def _value_at(body: bytes, path: str) -> Any:
    try:
        return value_at(msgspec.json.decode(body), path)
    except msgspec.DecodeError:
        return MISSING


def _short(value: Any) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."
