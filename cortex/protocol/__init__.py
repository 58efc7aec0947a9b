"""Every wire shape, one module per API family; ``decode`` is the single validating entry."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from cortex.errors import InvalidRequest
from cortex.validation import MISSING, split_error, value_at

T = TypeVar("T")

_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


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
    shown = "" if got is MISSING or text.startswith("Invalid") else f", got {_short(got)}"
    return InvalidRequest(f"Invalid value for '{param}': {text}{shown}.", param=param)


def _value_at(body: bytes, path: str) -> Any:
    try:
        return value_at(msgspec.json.decode(body), path)
    except msgspec.DecodeError:
        return MISSING


def _short(value: Any) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."
