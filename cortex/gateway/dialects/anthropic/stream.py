"""Chat completion chunks -> Anthropic Messages stream events, for the one relay loop.

Text goes out as it comes; a tool call's argument fragments are held until its block closes and
then sent whole (so ``input_json_delta`` pieces always concatenate to valid JSON); the stop
reason arrives in ``message_delta`` as Claude Code requires.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from cortex import protocol
from cortex.errors import CortexError, UpstreamError
from cortex.gateway import deltas
from cortex.gateway.dialects.anthropic.translate import (
    cached_tokens,
    new_tool_use_id,
    stop_reason,
    tool_input,
)
from cortex.protocol import anthropic as an
from cortex.protocol import openai as oa

_encoder = msgspec.json.Encoder()
# A stream silent this long (a prefill) gets empty text deltas instead of pings (keepalive).
TEXT_KEEPALIVE_AFTER_S = 60.0


class AnthropicStreamTranslator:
    """OpenAI stream chunks in, Anthropic SSE bytes out, for one response.

    Emits exactly Anthropic's sequence: message_start, ping, then per content block
    content_block_start / content_block_delta... / content_block_stop (one block at a time, text
    and each tool call in its own block, indexes from 0), then message_delta (always with a
    ``stop_reason``) and message_stop. A tool call's argument fragments are held until its block
    closes (see the module notes). Usage arrives in the upstream's final chunk (the gateway
    forces ``include_usage``), so input tokens are an estimate in message_start and exact in
    message_delta. After ``finish`` or ``error`` every call returns b"".
    """

    def __init__(
        self,
        model: str,
        message_id: str,
        input_tokens: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._created = clock()
        self._model = model
        self._message_id = message_id
        self._input_tokens = input_tokens
        self._output_tokens = 0
        self._cached_tokens = 0
        self._started = False
        self._done = False
        self._index = -1  # index of the latest block
        self._open = False  # whether that block is still open
        self._open_tool: int | None = None  # upstream tool_call index of the open block
        self._arguments: list[str] = []  # argument fragments of the open tool block
        self._tools_seen: set[int] = set()
        self._finish: oa.FinishReason | None = None

    def feed(self, chunk: oa.ChatCompletionChunk) -> bytes:
        """Raises UpstreamError if the upstream interleaves fragments of several tool calls."""
        if self._done:
            return b""
        events = self._start()
        if chunk.usage is not None:
            self._cached_tokens = cached_tokens(chunk.usage)
            self._input_tokens = chunk.usage.prompt_tokens - self._cached_tokens
            self._output_tokens = chunk.usage.completion_tokens
        more, self._finish = deltas.walk(chunk, self._text, self._tool_call, self._finish)
        return protocol.encode_events(events + more)

    def finish(self, matched_stop: str | None = None) -> bytes:
        """Close the message; ``matched_stop``: the stop sequence the output ended on, if any."""
        if self._done:
            return b""
        self._done = True
        reason = stop_reason(self._finish, bool(self._tools_seen), matched_stop)
        body = an.MessageDeltaBody(
            stop_reason=reason, stop_sequence=matched_stop if reason == "stop_sequence" else None
        )
        usage = an.DeltaUsage(
            output_tokens=self._output_tokens,
            input_tokens=self._input_tokens,
            cache_read_input_tokens=self._cached_tokens,
        )
        tail: list[an.StreamEvent] = [an.MessageDelta(body, usage), an.MessageStop()]
        return protocol.encode_events(self._start() + self._close_block() + tail)

    def error(self, err: CortexError) -> bytes:
        """An ``error`` event ending the stream (the HTTP status is already 200)."""
        if self._done:
            return b""
        self._done = True
        error = an.ErrorEvent(an.ErrorDetail(err.anthropic_type, err.message))
        return protocol.encode_events([error])

    def keepalive(self) -> bytes:
        """What keeps the stream alive while the upstream is silent (a long prefill): a
        ``ping`` (Anthropic's own keep-alive event) for the first ``TEXT_KEEPALIVE_AFTER_S``;
        after that an empty ``text_delta`` in the answer's text block, opened now if none is
        open (the answer's first text goes on in it). Claude Code's stream watchdog (300 s at
        least) skips ``ping`` when it resets, so pings alone let it drop a prefill that long;
        any other event resets it. The deltas carry no text: nothing is invented."""
        if self._done:
            return b""
        if events := self._start():
            return protocol.encode_events(events)
        if self._clock() - self._created < TEXT_KEEPALIVE_AFTER_S or self._open_tool is not None:
            return protocol.encode_events([an.Ping()])
        opened = [] if self._open else self._open_block(an.OutText(""), None)
        return protocol.encode_events(
            [*opened, an.ContentBlockDelta(self._index, an.TextDelta(""))]
        )

    def _start(self) -> list[an.StreamEvent]:
        if self._started:
            return []
        self._started = True
        message = an.MessagesResponse(
            id=self._message_id,
            model=self._model,
            content=[],
            stop_reason=None,
            usage=an.Usage(input_tokens=self._input_tokens, output_tokens=0),
        )
        return [an.MessageStart(message), an.Ping()]

    def _text(self, text: str) -> list[an.StreamEvent]:
        in_text = self._open and self._open_tool is None
        events = [] if in_text else self._open_block(an.OutText(""), None)
        return [*events, an.ContentBlockDelta(self._index, an.TextDelta(text))]

    def _tool_call(self, call: oa.ToolCallDelta) -> list[an.StreamEvent]:
        events: list[an.StreamEvent] = []
        fn = call.function
        if call.index not in self._tools_seen:
            if fn is None or not fn.name:
                raise UpstreamError("upstream tool call started without a name")
            self._tools_seen.add(call.index)
            block = an.OutToolUse(new_tool_use_id(), fn.name, {})
            events = self._open_block(block, call.index)
        elif not self._open or self._open_tool != call.index:
            raise UpstreamError("upstream interleaved fragments of several tool calls")
        if fn is not None and fn.arguments:
            self._arguments.append(fn.arguments)
        return events

    def _open_block(self, block: an.OutBlock, tool: int | None) -> list[an.StreamEvent]:
        events = self._close_block()
        self._index += 1
        self._open, self._open_tool = True, tool
        return [*events, an.ContentBlockStart(self._index, block)]

    def _close_block(self) -> list[an.StreamEvent]:
        if not self._open:
            return []
        events: list[an.StreamEvent] = []
        if self._open_tool is not None:
            pieces, self._arguments = self._arguments, []
            if not _is_json_object("".join(pieces)):
                pieces = [_encoder.encode(tool_input("".join(pieces))).decode()]
            events = [an.ContentBlockDelta(self._index, an.InputJsonDelta(p)) for p in pieces]
        self._open, self._open_tool = False, None
        return [*events, an.ContentBlockStop(self._index)]


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(msgspec.json.decode(text), dict)
    except msgspec.DecodeError:
        return False
