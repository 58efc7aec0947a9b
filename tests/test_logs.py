"""Both log formats: fields as keys (JSON) or key=value (text), and malformed-request reports cut
to one INFO line without the raw bytes."""

from __future__ import annotations

import json
import logging
import sys

from aiohttp.http_exceptions import BadHttpMessage

from cortex.logs import JsonFormatter, MalformedRequestFilter, TextFormatter


def _record(msg: str, fields: dict[str, object] | None = None, **kw: object) -> logging.LogRecord:
    record = logging.LogRecord("cortex.request", logging.INFO, __file__, 1, msg, (), None)
    if fields is not None:
        record.fields = fields
    for key, value in kw.items():
        setattr(record, key, value)
    return record


def test_json_is_one_object_per_line_with_fields_as_keys() -> None:
    line = JsonFormatter().format(_record("request", {"model": "m", "status": 200}))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "request" and entry["level"] == "info"
    assert entry["logger"] == "cortex.request"
    assert (entry["model"], entry["status"]) == ("m", 200)


def test_json_carries_a_traceback_as_one_escaped_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed", exc_info=sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exc"]


def test_text_appends_fields_and_quotes_values_with_spaces() -> None:
    line = TextFormatter().format(
        _record("request", {"model": "m", "error": "no node", "t": 0.1234567})
    )
    assert line.endswith('request model=m error="no node" t=0.1235')


def test_malformed_request_reports_lose_the_raw_bytes() -> None:
    try:
        raise BadHttpMessage("Invalid header value char", headers=None)  # type: ignore[arg-type]
    except BadHttpMessage:
        record = _record("Error handling request from %s", exc_info=sys.exc_info())
    record.args = ("authorization: Bearer sk-secret",)
    assert MalformedRequestFilter().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == "malformed request: BadHttpMessage"
