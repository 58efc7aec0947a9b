"""Chat completion chunks -> the OpenAI Responses event stream, for one response.

The counterpart of ``AnthropicStreamTranslator`` (dialects/anthropic/stream.py), driven by
relay.relay_stream.
A length finish ends the stream in ``response.incomplete`` (as OpenAI's does); a failure after
the headers went out ends it in ``response.failed`` carrying the error.
"""

from __future__ import annotations

import msgspec

from cortex import protocol
from cortex.errors import CortexError, UpstreamError
from cortex.gateway import deltas
from cortex.gateway.dialects.responses.translate import finished_response, incomplete, new_id
from cortex.protocol import openai as oa
from cortex.protocol import responses as rs


class ResponsesStreamTranslator:
    """OpenAI stream chunks in, Responses SSE bytes out, for one response.

    Emits OpenAI's sequence: response.created, response.in_progress, then per output item
    output_item.added, (for a message) content_part.added, output_text.delta...,
    output_text.done, content_part.done, (for a call) function_call_arguments.delta...,
    function_call_arguments.done, then output_item.done; one item open at a time, text and
    each tool call in its own item; finally response.completed (or .incomplete) carrying the
    whole response with usage. ``sequence_number`` counts every event from 0.
    """

    def __init__(self, skeleton: rs.Response) -> None:
        self._skeleton = skeleton
        self._seq = 0
        self._started = False
        self._done = False
        self._output: list[rs.OutputItem] = []  # closed items
        self._message: rs.OutputMessage | None = None  # the open message item
        self._text: list[str] = []  # its text so far
        self._call: rs.FunctionCallOutput | None = None  # the open function call item
        self._call_index: int | None = None  # its upstream tool_call index
        self._arguments: list[str] = []  # its arguments so far
        self._calls_seen: set[int] = set()
        self._finish: oa.FinishReason | None = None
        self._usage: oa.Usage | None = None

    def feed(self, chunk: oa.ChatCompletionChunk) -> bytes:
        """Raises UpstreamError if the upstream interleaves fragments of several tool calls."""
        if self._done:
            return b""
        events = self._start()
        self._usage = chunk.usage or self._usage
        more, self._finish = deltas.walk(chunk, self._text_delta, self._call_delta, self._finish)
        return protocol.encode_events(events + more)

    def finish(self, matched_stop: str | None = None) -> bytes:
        """Close the response (Responses has no stop sequences: ``matched_stop`` is unused)."""
        if self._done:
            return b""
        self._done = True
        status: rs.Status = "incomplete" if incomplete(self._finish) else "completed"
        events = self._start() + self._close(status)
        response = finished_response(self._skeleton, self._output, self._finish, self._usage)
        end = rs.ResponseIncomplete if response.status == "incomplete" else rs.ResponseCompleted
        events.append(end(sequence_number=self._next(), response=response))
        return protocol.encode_events(events)

    def error(self, err: CortexError) -> bytes:
        """``response.failed`` with the error (the HTTP status is already 200)."""
        if self._done:
            return b""
        self._done = True
        events = self._start()
        response = msgspec.structs.replace(
            self._skeleton,
            status="failed",
            output=self._output,
            error=rs.ResponseError(err.code or err.openai_type, err.message),
        )
        events.append(rs.ResponseFailed(sequence_number=self._next(), response=response))
        return protocol.encode_events(events)

    def keepalive(self) -> bytes:
        """``response.in_progress`` again, the response as it stands: the dialect's own event
        for a response still being worked on. Codex ends a stream silent for its
        ``stream_idle_timeout_ms`` and SSE comments do not count, while any event does, so a
        prefill longer than that limit no longer fails the turn."""
        if self._done:
            return b""
        if events := self._start():
            return protocol.encode_events(events)
        response = msgspec.structs.replace(self._skeleton, output=list(self._output))
        progress = rs.ResponseInProgress(sequence_number=self._next(), response=response)
        return protocol.encode_events([progress])

    def _next(self) -> int:
        self._seq += 1
        return self._seq - 1

    def _start(self) -> list[rs.StreamEvent]:
        if self._started:
            return []
        self._started = True
        return [
            rs.ResponseCreated(sequence_number=self._next(), response=self._skeleton),
            rs.ResponseInProgress(sequence_number=self._next(), response=self._skeleton),
        ]

    def _text_delta(self, text: str) -> list[rs.StreamEvent]:
        events: list[rs.StreamEvent] = []
        if self._message is None:
            events += self._close("completed")
            self._message = rs.OutputMessage(id=new_id("msg"), status="in_progress", content=[])
            index = len(self._output)
            events.append(
                rs.OutputItemAdded(
                    sequence_number=self._next(), output_index=index, item=self._message
                )
            )
            events.append(
                rs.ContentPartAdded(
                    sequence_number=self._next(),
                    item_id=self._message.id,
                    output_index=index,
                    content_index=0,
                    part=rs.OutputTextPart(text=""),
                )
            )
        self._text.append(text)
        events.append(
            rs.OutputTextDelta(
                sequence_number=self._next(),
                item_id=self._message.id,
                output_index=len(self._output),
                content_index=0,
                delta=text,
            )
        )
        return events

    def _call_delta(self, delta: oa.ToolCallDelta) -> list[rs.StreamEvent]:
        events: list[rs.StreamEvent] = []
        fn = delta.function
        if delta.index not in self._calls_seen:
            if fn is None or not fn.name:
                raise UpstreamError("upstream tool call started without a name")
            self._calls_seen.add(delta.index)
            events += self._close("completed")
            self._call = rs.FunctionCallOutput(
                id=new_id("fc"),
                call_id=delta.id or new_id("call"),
                name=fn.name,
                arguments="",
                status="in_progress",
            )
            self._call_index = delta.index
            events.append(
                rs.OutputItemAdded(
                    sequence_number=self._next(), output_index=len(self._output), item=self._call
                )
            )
        elif self._call is None or self._call_index != delta.index:
            raise UpstreamError("upstream interleaved fragments of several tool calls")
        assert self._call is not None
        if fn is not None and fn.arguments:
            self._arguments.append(fn.arguments)
            events.append(
                rs.FunctionCallArgumentsDelta(
                    sequence_number=self._next(),
                    item_id=self._call.id,
                    output_index=len(self._output),
                    delta=fn.arguments,
                )
            )
        return events

    def _close(self, status: rs.Status) -> list[rs.StreamEvent]:
        """The events closing the open item (if any), which joins the finished output."""
        index = len(self._output)
        item: rs.OutputItem
        if self._message is not None:
            text = "".join(self._text)
            part = rs.OutputTextPart(text=text)
            item = msgspec.structs.replace(self._message, status=status, content=[part])
            ident = item.id
            self._message, self._text = None, []
            events: list[rs.StreamEvent] = [
                rs.OutputTextDone(
                    sequence_number=self._next(),
                    item_id=ident,
                    output_index=index,
                    content_index=0,
                    text=text,
                ),
                rs.ContentPartDone(
                    sequence_number=self._next(),
                    item_id=ident,
                    output_index=index,
                    content_index=0,
                    part=part,
                ),
            ]
        elif self._call is not None:
            arguments = "".join(self._arguments)
            item = msgspec.structs.replace(self._call, status="completed", arguments=arguments)
            self._call, self._call_index, self._arguments = None, None, []
            events = [
                rs.FunctionCallArgumentsDone(
                    sequence_number=self._next(),
                    item_id=item.id,
                    output_index=index,
                    name=item.name,
                    arguments=arguments,
                )
            ]
        else:
            return []
        self._output.append(item)
        events.append(
            rs.OutputItemDone(sequence_number=self._next(), output_index=index, item=item)
        )
        return events
