"""The byte relay's counters (output chunks, the usage event) give what their regexes give,
whether a batch takes the bytes.count path or falls back to the regex."""

from __future__ import annotations

import random

import pytest

from cortex.gateway.exchange import Exchange
from cortex.gateway.proxy import (
    _TOKEN,
    _USAGE,
    _usage_by_event,
    holds_usage,
    output_count,
    relay_events,
)

PIECES = [
    b'data: {"choices":[{"delta":{"role":"assistant","content":""}}],"usage":null}\n\n',
    b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n',
    b'data: {"choices":[{"delta":{"content":"\\"q\\""}}]}\n\n',
    b'data: {"choices":[{"delta":{"content": "spaced"}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":null}}]}\n\n',
    b'data: {"choices":[{"delta":{"reasoning_content":"think"}}]}\n\n',
    b'data: {"choices":[{"text":"x","index":0}]}\n\n',
    b'data: {"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"content"}}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n',
    b'data: {"choices":[],"usage" : {"prompt_tokens":3}}\n\n',
    b'data: {"choices":[{"delta":{"content":"usage"}}],"usage":null}\n\n',
    b"data: [DONE]\n\n",
]


@pytest.mark.parametrize("piece", PIECES)
def test_each_piece_counts_as_the_regexes_count(piece: bytes) -> None:
    assert output_count(piece) == len(_TOKEN.findall(piece))
    assert holds_usage(piece) == (_USAGE.search(piece) is not None)


def test_random_batches_count_as_the_regexes_count() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        batch = b"".join(rng.choices(PIECES, k=rng.randint(1, 6)))
        assert output_count(batch) == len(_TOKEN.findall(batch)), batch
        assert holds_usage(batch) == (_USAGE.search(batch) is not None), batch


@pytest.mark.parametrize("keep_usage", [True, False])
def test_relayed_batches_equal_the_event_by_event_relay(keep_usage: bool) -> None:
    """The usage step that visits only the usage events gives the bytes and the counts of the
    one that walks every event (which also serves batches with empty events)."""
    rng = random.Random(11)
    pieces = [*PIECES, b"\n\n", b'data: {"usage":{"prompt_tokens":1}}\n\n']
    for _ in range(2000):
        batch = b"".join(rng.choices(pieces, k=rng.randint(1, 6)))
        fast, slow = Exchange("openai", "/"), Exchange("openai", "/")
        assert relay_events(batch, fast, keep_usage) == (
            _usage_by_event(batch, slow, keep_usage) if holds_usage(batch) else batch
        ), batch
        assert (fast.prompt_tokens, fast.completion_tokens) == (
            slow.prompt_tokens,
            slow.completion_tokens,
        )
