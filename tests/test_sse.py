"""The event-stream parser against the WHATWG rules, fed whole and byte by byte."""

from __future__ import annotations

import pytest

from cortex.sse import DONE, DONE_EVENT, EventStreamParser, Reframer, frame, frame_json

CASES = [
    pytest.param(b"data: {}\n\n", [b"{}"], id="lf"),
    pytest.param(b"data: {}\r\n\r\n", [b"{}"], id="crlf"),
    pytest.param(b"data: {}\r\r", [b"{}"], id="cr"),
    pytest.param(b"data:{}\n\ndata:[DONE]\n\n", [b"{}", b"[DONE]"], id="no-space"),
    pytest.param(b"data:  two\n\n", [b" two"], id="only-one-space-dropped"),
    pytest.param(b": keep-alive\n\ndata: a\n\n", [b"a"], id="comment"),
    pytest.param(b"data: a\ndata: b\n\n", [b"a\nb"], id="multi-line-data"),
    pytest.param(b"event: x\nid: 7\nretry: 5\ndata: a\n\n", [b"a"], id="other-fields"),
    pytest.param(b"event: ping\n\n", [], id="event-without-data-not-dispatched"),
    pytest.param(b"data\n\n", [b""], id="bare-data-field-is-an-empty-event"),
    pytest.param(b"data: a\r\n\ndata: b\n\r\n", [b"a", b"b"], id="mixed-line-ends"),
    pytest.param(b"data: a\n", [], id="unfinished-event-waits"),
]


@pytest.mark.parametrize(("stream", "events"), CASES)
def test_whole_stream(stream: bytes, events: list[bytes]) -> None:
    assert EventStreamParser().feed(stream) == events


@pytest.mark.parametrize(("stream", "events"), CASES)
def test_byte_by_byte_gives_the_same_events(stream: bytes, events: list[bytes]) -> None:
    parser = EventStreamParser()
    got = [e for i in range(len(stream)) for e in parser.feed(stream[i : i + 1])]
    assert got == events


def test_pending_reports_a_stream_cut_mid_event() -> None:
    parser = EventStreamParser()
    parser.feed(b"data: {}\n\ndata: {")
    assert parser.pending
    parser.feed(b"}\n\n")
    assert not parser.pending


def test_frame_is_what_the_parser_reads_back() -> None:
    assert EventStreamParser().feed(frame(b'{"a":1}')) == [b'{"a":1}']


def test_multi_line_data_frames_as_several_data_lines() -> None:
    assert frame(b"a\nb") == b"data: a\ndata: b\n\n"
    assert EventStreamParser().feed(frame(b"a\nb")) == [b"a\nb"]


def test_json_is_framed_on_one_line() -> None:
    assert frame_json(b'{\n "a": 1\n}') == b'data: {  "a": 1 }\n\n'


def _reference(stream: bytes) -> bytes:
    """What the parser and frame_json make of a stream, up to and including [DONE]."""
    events = EventStreamParser().feed(stream)
    done = DONE in events
    if done:
        events = events[: events.index(DONE)]
    return b"".join(frame_json(e) for e in events) + (DONE_EVENT if done else b"")


CANONICAL = b'data: {"a":1}\n\ndata: {"b":"x: y"}\n\ndata: \n\n' + DONE_EVENT
REFRAME_CASES = [
    *CASES,
    pytest.param(CANONICAL, [], id="canonical"),
    pytest.param(CANONICAL + b"data: after\n\n", [], id="nothing-after-done"),
    pytest.param(b"data: a\n\n: ping\n\ndata: b\n\n", [], id="canonical-then-comment"),
    pytest.param(b"data: a\n\ndata: b\r\n\r\ndata: c\n\n", [], id="canonical-then-crlf"),
    pytest.param(b"data: a\n\n\n\ndata: b\n\n", [], id="extra-blank-lines"),
    pytest.param(b"data: x data: [DONE]\n\ndata: y\n\n", [], id="done-inside-data-is-not-done"),
    pytest.param(b"data: a\n\ndata: [DONE]\r\n\r\n", [], id="crlf-done"),
]


@pytest.mark.parametrize(("stream", "_events"), REFRAME_CASES)
def test_reframer_gives_what_the_parser_gives(stream: bytes, _events: list[bytes]) -> None:
    whole = Reframer()
    assert whole.feed(stream) == _reference(stream)
    for size in (1, 2, 3, 7):
        split = Reframer()
        got = b"".join(split.feed(stream[i : i + size]) for i in range(0, len(stream), size))
        assert got == _reference(stream), size


def test_canonical_bytes_pass_through_untouched() -> None:
    reframer = Reframer()
    head, tail = CANONICAL[:20], CANONICAL[20:]
    assert reframer.feed(head) == b'data: {"a":1}\n\n'  # the unfinished second event waits
    assert reframer.pending
    assert reframer.feed(tail) == CANONICAL[15:]
    assert reframer.done
    assert reframer.feed(b"data: more\n\n") == b""
