"""``n`` choices on /v1/chat/completions, in process with the scripted FakeHarness (no torch):
one sequence per choice on the same prompt, chunks carrying their choice index, usage counting
the prompt once and every choice's tokens."""

from __future__ import annotations

from typing import Any

import pytest

from cortex.neuron.constraints import SamplingFeatures
from tests.neuron.fakes import FakeHarness
from tests.neuron.test_app import (  # noqa: F401  (fixtures)
    Client,
    MakeClient,
    chat,
    load,
    model_of,
    no_gpus,
    root,
    start,
    stream,
)


@pytest.fixture
def harness() -> FakeHarness:
    fake = FakeHarness()
    fake.sampling = SamplingFeatures(max_n=4)
    return fake


@pytest.fixture
async def client(start: MakeClient) -> Client:  # noqa: F811
    client = await start()
    await load(client)
    return client


async def test_n_choices_each_run_their_own_sequence_with_seed_plus_index(
    client: Client, harness: FakeHarness
) -> None:
    code, body = await chat(client, "say:hello", n=3, seed=7)
    assert code == 200
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in body["choices"]} == {"hello"}
    assert body["usage"]["prompt_tokens"] == len("user: say:hello\n")  # counted once
    assert body["usage"]["completion_tokens"] == 3 * 3
    assert sorted(p.seed for p in model_of(harness).params) == [7, 8, 9]


async def test_n_choices_without_a_seed_stay_unseeded(client: Client, harness: FakeHarness) -> None:
    code, _ = await chat(client, "say:hi", n=2)
    assert code == 200
    assert [p.seed for p in model_of(harness).params] == [None, None]


async def test_streamed_choices_carry_their_index_and_finish_each(client: Client) -> None:
    events = await stream(client, "say:hello", n=2, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks: list[Any] = events[:-1]
    usage = chunks.pop()
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2 * 3
    by_index: dict[int, list[Any]] = {0: [], 1: []}
    for chunk in chunks:
        (choice,) = chunk["choices"]
        by_index[choice["index"]].append(choice)
    for choices in by_index.values():
        assert choices[0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["delta"].get("content", "") for c in choices)
        assert text == "hello"
        assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["stop"]
        assert choices[-1]["finish_reason"] == "stop"


async def test_one_failing_choice_ends_the_stream_with_an_error_and_cancels_the_rest(
    client: Client, harness: FakeHarness
) -> None:
    events = await stream(client, "boom", n=3)
    assert events[-1] == "[DONE]"
    assert "error" in events[-2]
    assert model_of(harness).running == 0


async def test_n_above_the_harness_limit_is_refused_by_name(client: Client) -> None:
    code, body = await chat(client, "say:hi", n=5)
    assert code == 400
    assert body["error"]["param"] == "n"
