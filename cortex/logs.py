"""Logging set-up shared by both roles: human text or one JSON object per line.

Structured fields go in ``extra={"fields": {...}}``; the JSON formatter emits them as keys, the
text formatter as ``key=value`` pairs. Secrets are never passed to the logger in the first place,
and aiohttp's own reports of malformed requests, which quote raw header bytes, are cut to one
line (``MalformedRequestFilter``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import RequestPayloadError

_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        return line


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a malformed request (a bad header line, a head too long, a body that is not
    the gzip it claims) as an ERROR with a traceback whose message can quote the raw bytes,
    Authorization header and key included. Rewrite it as one INFO line naming only the kind of
    error; the client already got its 400."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | RequestPayloadError):
            record.msg, record.args = "malformed request: %s", (type(exc).__name__,)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestFilter())
