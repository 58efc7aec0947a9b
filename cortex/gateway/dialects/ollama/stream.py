"""Chat completion chunks -> Ollama's NDJSON stream (/api/chat and /api/generate).

A ``relay.StreamTranslator``: one JSON object a line, ``done: false`` for each text piece, the
tool calls (whole, arguments as objects, as Ollama sends them) in one object once the answer
ends, then the final ``done: true`` object with ``done_reason`` and the statistics. A failure
after the headers went out is one ``{"error": "..."}`` line, which Ollama's clients raise.
While the neuron is silent before the first token, an empty piece keeps the connection alive
(NDJSON has no comments, and every line must parse).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from cortex.errors import CortexError
from cortex.gateway.dialects.ollama.translate import Clock, now_rfc3339, tool_calls_out
from cortex.gateway.dialects.stream import HeldCallsWriter
from cortex.protocol import ollama as ol
from cortex.protocol import openai as oa

NDJSON_HEADERS = {"content-type": "application/x-ndjson", "cache-control": "no-cache"}
_encoder = msgspec.json.Encoder()
Kind = Literal["chat", "generate"]


def line(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj) + b"\n"


class OllamaStreamWriter(HeldCallsWriter):
    """OpenAI stream chunks in, NDJSON lines out, for one /api/chat or /api/generate answer."""

    def __init__(self, kind: Kind, model: str, clock: Clock) -> None:
        super().__init__()
        self._kind = kind
        self._model = model
        self._clock = clock

    def finish(self, matched_stop: str | None = None) -> bytes:
        if not self._end():
            return b""
        calls = self._calls.whole()
        out = line(self._piece("", tool_calls_out(calls))) if calls else b""
        final = self._clock.final(self._model, self._finish, self._usage)
        if self._kind == "chat":
            return out + line(
                ol.ChatChunk(message=ol.OutMessage(role="assistant", content=""), **final)
            )
        return out + line(ol.GenerateChunk(response="", **final))

    def error(self, err: CortexError) -> bytes:
        return line(ol.ErrorBody(err.message)) if self._end() else b""

    def keepalive(self) -> bytes:
        return b"" if self._done else line(self._piece(""))

    def _piece(self, text: str, calls: list[ol.OutToolCall] | None = None) -> msgspec.Struct:
        now = now_rfc3339()
        if self._kind == "chat":
            message = ol.OutMessage(role="assistant", content=text, tool_calls=calls)
            return ol.ChatChunk(model=self._model, created_at=now, done=False, message=message)
        return ol.GenerateChunk(model=self._model, created_at=now, done=False, response=text)

    def _text(self, text: str) -> list[bytes]:
        self._clock.token()
        return [line(self._piece(text))]

    def _hold(self, delta: oa.ToolCallDelta) -> list[bytes]:
        self._clock.token()
        return super()._hold(delta)
