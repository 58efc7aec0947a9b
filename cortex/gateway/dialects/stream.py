"""What the stream writers of Ollama and Gemini share: text goes out as it comes, tool calls
are held and go out whole when the answer ends (both APIs send each call in one piece).

``HeldCallsWriter`` is the part of a ``relay.StreamTranslator`` that does not depend on the
framing: the finished flag, the held calls, the finish reason and usage so far, and ``feed``
walking each chunk (deltas.walk). A subclass writes its own text pieces, end and error.
"""

from __future__ import annotations

from cortex.gateway import deltas
from cortex.gateway.dialects.calls import new_call_id
from cortex.protocol import openai as oa


class HeldCalls:
    """A stream's tool-call fragments, by upstream index, held until the answer ends."""

    def __init__(self) -> None:
        self._calls: dict[int, tuple[str, list[str], list[str]]] = {}  # id, name, arguments

    def add(self, delta: oa.ToolCallDelta) -> None:
        _, name, arguments = self._calls.setdefault(
            delta.index, (delta.id or new_call_id(), [], [])
        )
        fn = delta.function
        if fn is not None and fn.name:
            name.append(fn.name)
        if fn is not None and fn.arguments:
            arguments.append(fn.arguments)

    def whole(self) -> list[oa.ToolCall]:
        """The calls in order; one the upstream never named cannot be run and is left out."""
        return [
            oa.ToolCall(id=call_id, function=oa.FunctionCall(name[-1], "".join(arguments)))
            for call_id, name, arguments in self._calls.values()
            if name
        ]


class HeldCallsWriter:
    """Subclasses define ``_text`` (the bytes for a text piece) and the ``finish``/``error``
    that write their framing; ``_end`` marks the answer ended (False when it already was)."""

    def __init__(self) -> None:
        self._done = False
        self._calls = HeldCalls()
        self._finish: oa.FinishReason | None = None
        self._usage: oa.Usage | None = None

    def feed(self, chunk: oa.ChatCompletionChunk) -> bytes:
        if self._done:
            return b""
        self._usage = chunk.usage or self._usage
        pieces, self._finish = deltas.walk(chunk, self._text, self._hold, self._finish)
        return b"".join(pieces)

    def _end(self) -> bool:
        ended, self._done = self._done, True
        return not ended

    def _text(self, text: str) -> list[bytes]:
        raise NotImplementedError

    def _hold(self, delta: oa.ToolCallDelta) -> list[bytes]:
        self._calls.add(delta)
        return []
