"""Server-sent events: a parser that follows the WHATWG event-stream rules, and the one framing
cortex writes.

cortex's own neurons frame every event as ``data: <json>\\n\\n``, and the gateway relays those
bytes as they are (no re-parsing on the hot path). Other OpenAI-compatible servers
(``[[upstreams]]``) may frame differently and still be correct: CRLF or CR line ends,
``data:`` without a space, comments and keep-alives, an event split over several ``data:``
lines. ``Reframer`` passes bytes that are already in cortex's framing through untouched (most
servers frame so) and reads anything else with ``EventStreamParser``, re-framing it
canonically, so everything downstream sees one framing.
"""

from __future__ import annotations

import re

DONE = b"[DONE]"
_LINE_END = re.compile(rb"\r\n|\r|\n")


def frame(data: bytes, event: bytes | None = None) -> bytes:
    """One event: ``event: NAME`` when named, a ``data:`` line per line of ``data``, a blank
    line. The one writer of SSE framing (chunks.ChunkEncoder pre-encodes the same bytes)."""
    head = b"event: " + event + b"\n" if event else b""
    if b"\n" not in data:
        return head + b"data: " + data + b"\n\n"
    return head + b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"


def comment(text: bytes) -> bytes:
    """A comment line: a keep-alive every SSE reader skips."""
    return b": " + text + b"\n\n"


def frame_json(data: bytes) -> bytes:
    """A JSON event on one line (cortex's framing): a raw LF in JSON can only be whitespace."""
    return frame(data.replace(b"\n", b" "))


class EventStreamParser:
    """Incremental: ``feed`` bytes as they arrive, get back the data of each complete event.

    Per the spec: lines end in CRLF, LF or CR; a line starting with ``:`` is a comment; a field
    line is ``name: value`` or ``name:value`` (one leading space is dropped) or a bare name;
    several ``data`` lines join with ``\\n``; a blank line dispatches the event, and an event
    whose data is empty is not dispatched. Only ``data`` matters to OpenAI-style streams, so
    ``event``, ``id`` and ``retry`` are read and dropped.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF whose CR ended the previous chunk
        self._after_cr = chunk.endswith(b"\r")
        lines = _LINE_END.split(self._buffer + chunk)
        self._buffer = lines.pop()  # the last piece has no line end yet
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(b":"):
                continue
            name, colon, value = line.partition(b":")
            if colon and value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                self._data.append(value)
        return events

    @property
    def pending(self) -> bool:
        """Whether an event was started but not finished (the stream ended mid-event)."""
        return bool(self._data or self._buffer.strip())

    @property
    def idle(self) -> bool:
        """Whether the parser holds nothing: the bytes fed so far ended at an event boundary."""
        return not (self._data or self._buffer or self._after_cr)


DONE_EVENT = frame(DONE)


class Reframer:
    """Any valid event stream in, cortex's framing out, up to and including ``[DONE]``.

    Bytes that are already ``data: <one line>\\n\\n`` events pass through as they are (one
    scan of the bytes, no per-event work); anything else (CR line ends, comments, other fields,
    multi-line data) goes through ``EventStreamParser`` and ``frame_json``. Both give the same
    bytes for the same input; an unfinished event is held until its end arrives.
    """

    def __init__(self) -> None:
        self._parser = EventStreamParser()
        self._tail = b""  # an unfinished canonical event (no CR in it)
        self.done = False  # [DONE] was reached: feed returns nothing more

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        data = self._tail + chunk if self._tail else chunk
        self._tail = b""
        if self._parser.idle:
            cut = data.rfind(b"\n\n") + 2  # 1 when there is no event end
            whole, rest = (data[:cut], data[cut:]) if cut > 1 else (b"", data)
            if b"\r" not in rest and (not whole or _canonical(whole)):
                self._tail = rest
                return self._until_done(whole)
        events = self._parser.feed(data)
        if DONE in events:
            events = events[: events.index(DONE)]
            self.done = True
        framed = b"".join(frame_json(e) for e in events)
        return framed + DONE_EVENT if self.done else framed

    @property
    def pending(self) -> bool:
        """Whether an event was started but not finished (the stream ended mid-event)."""
        return self._parser.pending or bool(self._tail.strip())

    def _until_done(self, whole: bytes) -> bytes:
        """Canonical events up to the first ``[DONE]`` event (inclusive), if there is one."""
        at = whole.find(DONE_EVENT)
        while at >= 0:
            if at == 0 or whole[at - 2 : at] == b"\n\n":  # a whole event, not a data suffix
                self.done = True
                return whole[: at + len(DONE_EVENT)]
            at = whole.find(DONE_EVENT, at + 1)
        return whole


def _canonical(whole: bytes) -> bool:
    """Whether ``whole`` (ending in a blank line) is only ``data: <line>\\n\\n`` events: it
    starts with ``data: ``, has no CR, and its LFs are exactly the pairs before each later
    ``data: `` plus the closing pair (so no event holds a line break of its own)."""
    return (
        whole.startswith(b"data: ")
        and b"\r" not in whole
        and whole.count(b"\n") == 2 * (whole.count(b"\n\ndata: ") + 1)
    )
