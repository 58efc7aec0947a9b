"""Chat completion chunks -> Gemini's streamGenerateContent, as SSE (``alt=sse``) or as one
JSON array written piece by piece (Google's default).

A ``relay.StreamTranslator``: each text piece is a GenerateContentResponse with one candidate
holding the text; function calls are held and sent whole (as Gemini sends them) in the last
response, which also carries ``finishReason`` and ``usageMetadata``. A failure after the
headers went out is Google's error object as the next event (or array element). Nothing is
sent while the neuron is silent: neither framing has a comment Google's SDKs skip.
"""

from __future__ import annotations

import msgspec

from cortex import sse
from cortex.errors import CortexError
from cortex.gateway import deltas
from cortex.gateway.dialects.calls import new_call_id
from cortex.gateway.dialects.gemini.translate import (
    call_parts,
    error_body,
    finish_reason,
    usage,
)
from cortex.protocol import gemini as gm
from cortex.protocol import openai as oa

SSE_HEADERS = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}
ARRAY_HEADERS = {"content-type": "application/json", "cache-control": "no-cache"}
_encoder = msgspec.json.Encoder()


class _Call:
    def __init__(self, call_id: str) -> None:
        self.id, self.name = call_id, ""
        self.arguments: list[str] = []


class GeminiStreamWriter:
    """OpenAI stream chunks in, Gemini responses out (``sse``: SSE events, else a JSON array)."""

    def __init__(self, model: str, response_id: str, sse_framing: bool) -> None:
        self._model = model
        self._id = response_id
        self._sse = sse_framing
        self._sent = 0  # objects written (the array needs "[" before the first, "," after)
        self._done = False
        self._calls: dict[int, _Call] = {}
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
        calls = [
            oa.ToolCall(id=c.id, function=oa.FunctionCall(c.name, "".join(c.arguments)))
            for c in self._calls.values()
            if c.name
        ]
        candidate = gm.Candidate(
            content=gm.OutContent(parts=call_parts(calls) or [gm.OutPart(text="")], role="model"),
            finish_reason=finish_reason(self._finish),
        )
        last = self._response([candidate], usage(self._usage))
        return self._write(_encoder.encode(last)) + self._close()

    def error(self, err: CortexError) -> bytes:
        if self._done:
            return b""
        self._done = True
        return self._write(error_body(err)) + self._close()

    def keepalive(self) -> bytes:
        return b""

    def _response(
        self, candidates: list[gm.Candidate], meta: gm.UsageMetadata | None = None
    ) -> gm.GenerateContentResponse:
        return gm.GenerateContentResponse(
            candidates=candidates,
            usage_metadata=meta,
            model_version=self._model,
            response_id=self._id,
        )

    def _write(self, body: bytes) -> bytes:
        self._sent += 1
        if self._sse:
            return sse.frame(body)
        return (b"[" if self._sent == 1 else b",\r\n") + body

    def _close(self) -> bytes:
        if self._sse:
            return b""
        return b"]" if self._sent else b"[]"

    def _text(self, text: str) -> list[bytes]:
        candidate = gm.Candidate(content=gm.OutContent(parts=[gm.OutPart(text=text)], role="model"))
        return [self._write(_encoder.encode(self._response([candidate])))]

    def _call(self, delta: oa.ToolCallDelta) -> list[bytes]:
        """Held until the end: Gemini sends each call whole."""
        call = self._calls.get(delta.index)
        if call is None:
            call = self._calls[delta.index] = _Call(delta.id or new_call_id())
        fn = delta.function
        if fn is not None and fn.name:
            call.name = fn.name
        if fn is not None and fn.arguments:
            call.arguments.append(fn.arguments)
        return []
