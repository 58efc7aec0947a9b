from __future__ import annotations

import pytest

from cortex.neuron.stops import Holdback, StopMatcher


def run(chunks: list[str], stops: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(c) for c in chunks)
    if not matcher.matched:
        out += matcher.flush()
    return out, matcher.matched is not None


def test_matched_names_the_earliest_stop_string() -> None:
    matcher = StopMatcher(["STOP", "END"])
    assert matcher.feed("xx END yy STOP") == "xx "
    assert matcher.matched == "END"


TEXT = "Hello <|user|> world"


@pytest.mark.parametrize("cut", range(1, len(TEXT)))
def test_stop_string_split_at_every_position_is_never_emitted(cut: int) -> None:
    assert run([TEXT[:cut], TEXT[cut:]], ["<|user|>"]) == ("Hello ", True)


def test_stop_string_one_character_per_token() -> None:
    assert run(list(TEXT), ["<|user|>"]) == ("Hello ", True)


def test_partial_prefix_that_does_not_complete_is_released() -> None:
    assert run(["a <|us", "e", "r"], ["<|user|>"]) == ("a <|user", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run(["xx END yy STOP"], ["STOP", "END"]) == ("xx ", True)


def test_held_text_is_released_as_soon_as_it_cannot_match() -> None:
    matcher = StopMatcher(["abc"])
    assert matcher.feed("xab") == "x"
    assert matcher.feed("d") == "abd"


def test_no_stops_passes_text_through() -> None:
    matcher = StopMatcher([])
    assert matcher.feed("<|user|>") == "<|user|>"
    assert matcher.flush() == ""


def test_nothing_after_a_match() -> None:
    matcher = StopMatcher(["."])
    assert matcher.feed("a.b") == "a"
    assert matcher.feed("more") == ""


@pytest.mark.parametrize(
    ("text", "held"),
    [("abc<tool", 5), ("abc<tool_call", 10), ("abc<tool_call>", 0), ("abc", 0), ("<", 1), ("", 0)],
)
def test_holdback_is_the_longest_tail_that_may_still_become_a_marker(text: str, held: int) -> None:
    assert Holdback(["<tool_call>", "<|im_end|>"]).length(text) == held
