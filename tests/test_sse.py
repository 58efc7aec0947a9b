"""The event-stream parser against the WHATWG rules, fed whole and byte by byte."""

from __future__ import annotations

import pytest

from cortex.sse import EventStreamParser, frame, frame_json

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
