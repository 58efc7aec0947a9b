"""One sequence's stop rules: EOS, max_new_tokens, and vLLM's ignore_eos."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest
from cortex_transformers.generation import Generation

from cortex.neuron.harness import SamplingParams

EOS = 7


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _generation(loop: asyncio.AbstractEventLoop, **params: object) -> Generation:
    def decode(ids: Sequence[int]) -> str:
        return "".join(chr(97 + i % 26) for i in ids)

    return Generation(
        [1, 2, 3],
        SamplingParams(max_new_tokens=3, **params),  # type: ignore[arg-type]
        eos_ids=frozenset({EOS}),
        context_length=100,
        decode=decode,
        loop=loop,
    )


def test_eos_stops_the_sequence(loop: asyncio.AbstractEventLoop) -> None:
    gen = _generation(loop)
    gen.accept(4)
    event = gen.accept(EOS)
    assert event.finish_reason == "stop" and event.completion_tokens == 1


def test_ignore_eos_runs_to_max_tokens(loop: asyncio.AbstractEventLoop) -> None:
    gen = _generation(loop, ignore_eos=True)
    events = [gen.accept(EOS) for _ in range(3)]
    assert [e.finish_reason for e in events] == [None, None, "length"]
    assert events[-1].completion_tokens == 3 and gen.tokens[-3:] == [EOS] * 3
