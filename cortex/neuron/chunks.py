"""Server-sent events for a chat completion stream, encoded once per chunk.

Content deltas are the hot path (one per token), so the constant JSON around ``delta.content``
is encoded once per stream from a real ``ChatCompletionChunk`` and only the text is encoded per
token: the bytes are identical to encoding the whole struct, a test checks it.
"""

from __future__ import annotations

from typing import Final

import msgspec

from cortex import sse
from cortex.errors import CortexError, openai_body
from cortex.protocol import openai

DONE: Final = sse.DONE_EVENT

_encoder = msgspec.json.Encoder()
_SENTINEL = "\x00cortex\x00"


def event(payload: bytes) -> bytes:
    return sse.frame(payload)


def error_event(err: CortexError) -> bytes:
    """An error after the stream started: OpenAI SDKs raise on a ``data: {"error": ...}`` event."""
    return event(openai_body(err))


class ChunkEncoder:
    """Encodes the chunks of one choice of a stream (one completion id, model and creation
    time; ``index`` the choice's, for a request with ``n`` > 1)."""

    def __init__(self, completion_id: str, created: int, model: str, index: int = 0) -> None:
        self._id, self._created, self._model, self._index = completion_id, created, model, index
        raw = self._encode(openai.Delta(content=_SENTINEL), None)
        head, tail = raw.split(_encoder.encode(_SENTINEL))
        self._head, self._tail = b"data: " + head, tail + b"\n\n"

    def content(self, text: str) -> bytes:
        return self._head + _encoder.encode(text) + self._tail

    def delta(
        self,
        delta: openai.Delta,
        finish: openai.FinishReason | None = None,
        stop_reason: str | None = None,
        logprobs: openai.ChoiceLogprobs | None = None,
    ) -> bytes:
        return event(self._encode(delta, finish, stop_reason, logprobs))

    def usage(self, usage: openai.Usage) -> bytes:
        """The extra chunk ``stream_options.include_usage`` asks for: no choices, only usage."""
        chunk = openai.ChatCompletionChunk(
            id=self._id, created=self._created, model=self._model, choices=[], usage=usage
        )
        return event(_encoder.encode(chunk))

    def _encode(
        self,
        delta: openai.Delta,
        finish: openai.FinishReason | None,
        stop_reason: str | None = None,
        logprobs: openai.ChoiceLogprobs | None = None,
    ) -> bytes:
        choice = openai.ChunkChoice(
            index=self._index,
            delta=delta,
            finish_reason=finish,
            stop_reason=stop_reason,
            logprobs=logprobs,
        )
        chunk = openai.ChatCompletionChunk(
            id=self._id, created=self._created, model=self._model, choices=[choice]
        )
        return _encoder.encode(chunk)


def encode(value: msgspec.Struct) -> bytes:
    return _encoder.encode(value)
