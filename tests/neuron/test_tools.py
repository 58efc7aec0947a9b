"""Tool-call parsers: streaming robustness (tags split anywhere) and the non-stream helper."""

from __future__ import annotations

import msgspec
import pytest

from cortex.errors import InvalidRequest
from cortex.neuron.tools import (
    PARSERS,
    ContentEvent,
    ParsedEvent,
    ToolCallEvent,
    ToolParser,
    get_parser,
)

WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TIME = '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC", "fmt": 24}}\n</tool_call>'


def hermes() -> ToolParser:
    return get_parser("hermes")()


def run(parser: ToolParser, *pieces: str) -> list[ParsedEvent]:
    events: list[ParsedEvent] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.finish()


def content(events: list[ParsedEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentEvent))


def calls(events: list[ParsedEvent]) -> list[ToolCallEvent]:
    return [e for e in events if isinstance(e, ToolCallEvent)]


def test_plain_text_passes_through_as_it_streams() -> None:
    parser = hermes()
    assert parser.feed("Hello") == [ContentEvent("Hello")]
    assert parser.feed(", world") == [ContentEvent(", world")]
    assert parser.finish() == []
    assert not parser.saw_tool_calls


def test_one_call_is_parsed_with_normalized_arguments() -> None:
    parser = hermes()
    events = run(parser, WEATHER)
    assert content(events) == ""
    [call] = calls(events)
    assert (call.index, call.name, call.arguments) == (0, "get_weather", '{"city":"Paris"}')
    assert call.id.startswith("call_") and len(call.id) > len("call_")
    assert parser.saw_tool_calls


def test_two_calls_get_consecutive_indexes_and_distinct_ids() -> None:
    events = run(hermes(), WEATHER + "\n" + TIME + "\n")
    assert content(events) == ""
    first, second = calls(events)
    assert (first.index, second.index) == (0, 1)
    assert second.name == "get_time"
    assert msgspec.json.decode(second.arguments) == {"tz": "UTC", "fmt": 24}
    assert first.id != second.id


def test_whitespace_around_calls_is_dropped_but_kept_in_plain_text() -> None:
    assert content(run(hermes(), "\n", WEATHER, "\n\n")) == ""
    assert content(run(hermes(), "a\n\n", "b \n")) == "a\n\nb \n"


def test_text_then_call_keeps_order_and_drops_the_gap_whitespace() -> None:
    events = run(hermes(), "Let me check.", "\n\n", WEATHER, "\n")
    assert [type(e) for e in events] == [ContentEvent, ToolCallEvent]
    assert content(events) == "Let me check."


def test_missing_arguments_mean_an_empty_object() -> None:
    [call] = calls(run(hermes(), '<tool_call>{"name": "now"}</tool_call>'))
    assert call.arguments == "{}"


@pytest.mark.parametrize("split", range(1, len("A " + WEATHER + " B")))
def test_a_call_split_across_two_feeds_at_any_position(split: int) -> None:
    text = "A " + WEATHER + " B"
    parser = hermes()
    first = parser.feed(text[:split])
    events = first + parser.feed(text[split:]) + parser.finish()
    assert content(events) == "A B"
    assert [c.name for c in calls(events)] == ["get_weather"]
    assert all("<" not in e.text for e in first if isinstance(e, ContentEvent))


def test_every_pair_of_split_points_across_two_calls() -> None:
    text = "x" + WEATHER + TIME + "y"
    for i in range(1, len(text)):
        for j in range(i, len(text), 7):
            events = run(hermes(), text[:i], text[i:j], text[j:])
            assert content(events) == "xy", (i, j)
            assert [c.name for c in calls(events)] == ["get_weather", "get_time"], (i, j)


def test_one_character_at_a_time() -> None:
    text = "Sure: " + WEATHER
    events = run(hermes(), *text)
    assert content(events) == "Sure:"
    assert len(calls(events)) == 1


def test_only_a_possible_tag_prefix_and_trailing_whitespace_are_held_back() -> None:
    parser = hermes()
    assert parser.feed("see <tool") == [ContentEvent("see")]
    assert parser.feed("box> ") == [ContentEvent(" <toolbox>")]
    assert parser.feed("now") == [ContentEvent(" now")]


@pytest.mark.parametrize("text", ["a < b", "x <tool_c y", "<", "1 <<tool_call", "</tool_call>"])
def test_angle_brackets_in_ordinary_text_are_not_swallowed(text: str) -> None:
    assert content(run(hermes(), text)) == text
    assert content(run(hermes(), *text)) == text


@pytest.mark.parametrize(
    "block",
    [
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"name": "f", "arguments": [1]}</tool_call>',
        '<tool_call>["f"]</tool_call>',
    ],
)
def test_malformed_block_comes_back_as_text(block: str) -> None:
    parser = hermes()
    events = run(parser, "before\n", block, " after")
    assert content(events) == "before\n" + block + " after"
    assert not parser.saw_tool_calls


def test_malformed_block_keeps_the_whitespace_before_it() -> None:
    assert content(run(hermes(), "a", "\n", "<tool_call>oops</tool_call>")) == (
        "a\n<tool_call>oops</tool_call>"
    )


def test_unterminated_block_is_flushed_as_text_at_finish() -> None:
    parser = hermes()
    assert parser.feed('Hi <tool_call>{"name": "f"') == [ContentEvent("Hi")]
    assert parser.finish() == [ContentEvent(' <tool_call>{"name": "f"')]
    assert not parser.saw_tool_calls


def test_dangling_tag_prefix_is_flushed_at_finish() -> None:
    parser = hermes()
    assert parser.feed("end <tool_") == [ContentEvent("end")]
    assert parser.finish() == [ContentEvent(" <tool_")]


def test_call_event_maps_onto_openai_shapes() -> None:
    [call] = calls(run(hermes(), WEATHER))
    delta = call.as_delta()
    assert delta.index == 0 and delta.id == call.id and delta.type == "function"
    assert delta.function is not None
    assert (delta.function.name, delta.function.arguments) == ("get_weather", call.arguments)
    assert call.as_tool_call().function.arguments == '{"city":"Paris"}'


def test_parse_complete_with_text_and_calls() -> None:
    text_out, tool_calls = hermes().parse_complete("I'll look.\n" + WEATHER + "\n" + TIME + "\n")
    assert text_out == "I'll look."
    assert [c.function.name for c in tool_calls] == ["get_weather", "get_time"]
    assert tool_calls[0].id.startswith("call_")


def test_parse_complete_calls_only_gives_no_content() -> None:
    assert hermes().parse_complete("\n" + WEATHER)[0] is None


def test_parse_complete_plain_text_is_untouched() -> None:
    assert hermes().parse_complete("  spaced  \n") == ("  spaced  \n", [])


def test_none_parser_passes_everything() -> None:
    parser = get_parser("none")()
    events = run(parser, "a ", WEATHER, "<tool")
    assert content(events) == "a " + WEATHER + "<tool"
    assert calls(events) == [] and not parser.saw_tool_calls
    assert parser.feed("") == []


def test_registry_names_and_unknown_parser() -> None:
    assert set(PARSERS) == {"hermes", "none"}
    with pytest.raises(InvalidRequest, match="unknown tool parser 'qwen9'"):
        get_parser("qwen9")
