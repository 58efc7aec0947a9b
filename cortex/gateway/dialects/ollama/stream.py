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
from cortex.gateway import deltas
from cortex.gateway.dialects.calls import new_call_id
from cortex.gateway.dialects.ollama.translate import Clock, now_rfc3339, tool_calls_out
from cortex.protocol import ollama as ol
from cortex.protocol import openai as oa

NDJSON_HEADERS = {"content-type": "application/x-ndjson", "cache-control": "no-cache"}
_encoder = msgspec.json.Encoder()
Kind = Literal["chat", "generate"]


def line(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj) + b"\n"


class _Call:
    def __init__(self, call_id: str, name: str) -> None:
        self.id, self.name = call_id, name
        self.arguments: list[str] = []


class OllamaStreamWriter:
    """OpenAI stream chunks in, NDJSON lines out, for one /api/chat or /api/generate answer."""

    def __init__(self, kind: Kind, model: str, clock: Clock) -> None:
        self._kind = kind
        self._model = model
        self._clock = clock
        self._done = False
        self._calls: dict[int, _Call] = {}  # by upstream tool_call index, in order
        self._finish: oa.FinishReason | None = None
        self._usage: oa.Usage | None = None

    def feed(self, chunk: oa.ChatCompletionChunk) -> bytes:
        if self._done:
            return b""
        self._usage = chunk.usage or self._usage
        pieces, self._finish = deltas.walk(chunk, self._text, self._call, self._finish)
        return b"".join(pieces)

    def finish(self, matched_stop: str | None = None) -> bytes:
        if self._done:
            return b""
        self._done = True
        out = b""
        if self._calls:
            calls = [
                oa.ToolCall(id=c.id, function=oa.FunctionCall(c.name, "".join(c.arguments)))
                for c in self._calls.values()
                if c.name  # a call the upstream never named cannot be run
            ]
            out = line(self._piece("", tool_calls_out(calls)))
        final = self._clock.final(self._model, self._finish, self._usage)
        if self._kind == "chat":
            return out + line(
                ol.ChatChunk(message=ol.OutMessage(role="assistant", content=""), **final)
            )
        return out + line(ol.GenerateChunk(response="", **final))

    def error(self, err: CortexError) -> bytes:
        if self._done:
            return b""
        self._done = True
        return line(ol.ErrorBody(err.message))

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

    def _call(self, delta: oa.ToolCallDelta) -> list[bytes]:
        """Held until the end: Ollama sends each call whole."""
        self._clock.token()
        fn = delta.function
        call = self._calls.get(delta.index)
        if call is None:
            call = self._calls[delta.index] = _Call(delta.id or new_call_id(), "")
        if fn is not None and fn.name:
            call.name = fn.name
        if fn is not None and fn.arguments:
            call.arguments.append(fn.arguments)
        return []
