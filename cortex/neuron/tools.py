"""Tool-call parsers: turn a model's raw text into OpenAI content and tool calls.

Models announce tool calls in text; each family has its own markup. A parser is fed the decoded
text as it streams and returns events the neuron maps one-to-one onto OpenAI stream deltas, so the
streaming and non-streaming paths share one parser. Parsers are registered by name (a model
entry's ``tool_parser``); "none" passes text through untouched.

A forced ``tool_choice`` (required, or one named tool) is honoured by starting the assistant
turn with the parser's ``call_prefix``: the model can then only continue a tool call, and the
neuron feeds the same prefix to the parser before the generated text.

Contract: ``feed`` and ``finish`` never raise on model output. Markup that does not parse comes
back verbatim as content, so a confused model degrades to text instead of a failed request. A
parser instance serves one sequence; it is not thread-safe.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

import msgspec

from cortex.errors import InvalidRequest
from cortex.neuron.stops import Holdback
from cortex.protocol import openai


class ContentEvent(msgspec.Struct, frozen=True):
    """Plain assistant text, to be sent as ``delta.content``."""

    text: str


class ToolCallEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One complete tool call; ``arguments`` is a JSON object encoded as a string."""

    index: int
    id: str
    name: str
    arguments: str

    def as_delta(self) -> openai.ToolCallDelta:
        """The whole call as a single OpenAI stream delta (id, name and arguments at once)."""
        function = openai.ToolCallFunctionDelta(name=self.name, arguments=self.arguments)
        return openai.ToolCallDelta(
            index=self.index, id=self.id, type="function", function=function
        )

    def as_tool_call(self) -> openai.ToolCall:
        return openai.ToolCall(id=self.id, function=openai.FunctionCall(self.name, self.arguments))


ParsedEvent = ContentEvent | ToolCallEvent


class ToolParser(ABC):
    """Incremental parser for one generated sequence."""

    saw_tool_calls: bool = False
    """True once a tool call was emitted: the finish_reason must then be "tool_calls"."""

    markup: ClassVar[tuple[str, str] | None] = None
    """The tags around one call whose body is ``{"name": ..., "arguments": {...}}`` (what a
    grammar can force, constraints.py); None when this markup cannot be constrained."""

    @classmethod
    def call_prefix(cls, name: str | None) -> str | None:
        """Text that opens a call (of tool ``name``, or of any tool for None); None when this
        markup cannot be forced."""
        return None

    @abstractmethod
    def feed(self, text: str) -> list[ParsedEvent]:
        """Consume the next decoded text; return what can be emitted now."""

    @abstractmethod
    def finish(self) -> list[ParsedEvent]:
        """End of generation: flush whatever is still held back."""

    def parse_complete(self, text: str) -> tuple[str | None, list[openai.ToolCall]]:
        """Non-streaming: the message content and tool calls for a whole completion.

        With tool calls, surrounding whitespace is stripped and empty content becomes None, as
        OpenAI returns it; plain text comes back exactly as generated.
        """
        events = self.feed(text) + self.finish()
        content = "".join(e.text for e in events if isinstance(e, ContentEvent))
        calls = [e.as_tool_call() for e in events if isinstance(e, ToolCallEvent)]
        if calls:
            return content.strip() or None, calls
        return content, calls


class PassthroughParser(ToolParser):
    """For models without tool markup: everything is content."""

    def feed(self, text: str) -> list[ParsedEvent]:
        return [ContentEvent(text)] if text else []

    def finish(self) -> list[ParsedEvent]:
        return []


class _HermesCall(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    arguments: dict[str, Any] = {}


_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_OPEN_HOLDBACK = Holdback([_OPEN])  # text that may be the start of a tool call waits
_call_decoder = msgspec.json.Decoder(_HermesCall)
_encoder = msgspec.json.Encoder()


def _new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


class HermesParser(ToolParser):
    """Hermes / Qwen markup: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

    Outside a block, only a suffix that could still become ``<tool_call>`` is held back; inside,
    the block is buffered until ``</tool_call>`` and then emitted as one whole call (arguments
    re-encoded, so they are always valid JSON). Trailing whitespace is held too: it goes out with
    the next text, or is dropped when a tool call (or, after calls, the end) follows, which removes
    the newlines models put around their blocks. What comes out never depends on how the text
    was chunked.
    """

    markup = (_OPEN, _CLOSE)

    @classmethod
    def call_prefix(cls, name: str | None) -> str:
        """``<tool_call>`` and a newline, then ``{"name": NAME, "arguments": `` for a named tool:
        the layout the hermes/Qwen templates show the model."""
        if name is None:
            return _OPEN + "\n"
        return f'{_OPEN}\n{{"name": {_encoder.encode(name).decode()}, "arguments": '

    def __init__(self) -> None:
        self._buf = ""
        self._in_call = False
        self._gap = ""  # whitespace dropped before the open block, restored if it is not a call
        self._calls = 0

    def feed(self, text: str) -> list[ParsedEvent]:
        self._buf += text
        events: list[ParsedEvent] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> list[ParsedEvent]:
        rest = self._gap + _OPEN + self._buf if self._in_call else self._buf
        self._buf, self._in_call = "", False
        if not rest or (self.saw_tool_calls and rest.isspace()):
            return []
        return [ContentEvent(rest)]

    def _step(self, events: list[ParsedEvent]) -> bool:
        """Consume one piece of the buffer; False when the rest must wait for more text."""
        if self._in_call:
            end = self._buf.find(_CLOSE)
            if end < 0:
                return False
            body, self._buf = self._buf[:end], self._buf[end + len(_CLOSE) :]
            self._in_call = False
            events.append(self._call_or_text(body))
            return True
        start = self._buf.find(_OPEN)
        if start >= 0:
            text, self._buf = self._buf[:start], self._buf[start + len(_OPEN) :]
            self._in_call = True
            self._emit_text(text, events)
            self._gap = text[len(text.rstrip()) :]
            return True
        held = _OPEN_HOLDBACK.length(self._buf)
        ready = len(self._buf[: len(self._buf) - held].rstrip())
        self._emit_text(self._buf[:ready], events)
        self._buf = self._buf[ready:]
        return False

    @staticmethod
    def _emit_text(text: str, events: list[ParsedEvent]) -> None:
        """Emit ``text`` without its trailing whitespace (held until we know what follows)."""
        if text := text.rstrip():
            events.append(ContentEvent(text))

    def _call_or_text(self, body: str) -> ParsedEvent:
        try:
            call = _call_decoder.decode(body.strip())
        except (msgspec.DecodeError, msgspec.ValidationError):
            return ContentEvent(self._gap + _OPEN + body + _CLOSE)
        event = ToolCallEvent(
            index=self._calls,
            id=_new_call_id(),
            name=call.name,
            arguments=_encoder.encode(call.arguments).decode(),
        )
        self._calls += 1
        self.saw_tool_calls = True
        return event


PARSERS: Mapping[str, type[ToolParser]] = MappingProxyType(
    {"hermes": HermesParser, "none": PassthroughParser}
)


def get_parser(name: str) -> type[ToolParser]:
    """The factory registered under ``name``; one parser per generated sequence."""
    try:
        return PARSERS[name]
    except KeyError:
        known = ", ".join(sorted(PARSERS))
        raise InvalidRequest(f"unknown tool parser {name!r} (known: {known})") from None
