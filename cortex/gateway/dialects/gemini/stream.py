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
from cortex.gateway.dialects.gemini.translate import (
    call_parts,
    error_body,
    finish_reason,
    usage,
)
from cortex.gateway.dialects.stream import HeldCallsWriter
from cortex.protocol import gemini as gm

ARRAY_HEADERS = {"content-type": "application/json", "cache-control": "no-cache"}
_encoder = msgspec.json.Encoder()


class GeminiStreamWriter(HeldCallsWriter):
    """OpenAI stream chunks in, Gemini responses out (``sse``: SSE events, else a JSON array)."""

    def __init__(self, model: str, response_id: str, sse_framing: bool) -> None:
        super().__init__()
        self._model = model
        self._id = response_id
        self._sse = sse_framing
        self._sent = 0  # objects written (the array needs "[" before the first, "," after)

    def finish(self, matched_stop: str | None = None) -> bytes:
        if not self._end():
            return b""
        calls = self._calls.whole()
        candidate = gm.Candidate(
            content=gm.OutContent(parts=call_parts(calls) or [gm.OutPart(text="")], role="model"),
            finish_reason=finish_reason(self._finish),
        )
        last = self._response([candidate], usage(self._usage))
        return self._write(_encoder.encode(last)) + self._close()

    def error(self, err: CortexError) -> bytes:
        return self._write(error_body(err)) + self._close() if self._end() else b""

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
