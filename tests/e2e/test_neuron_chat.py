"""Chat completions against a real neuron process on the tiny demo model, via the openai SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import openai
import pytest

from tests.e2e.neuron_process import NeuronProcess

CONTEXT = 4096  # the demo model's own; long enough that a hang-up test cannot finish first
DEFAULT_MAX_TOKENS = 24  # the entry's default_max_tokens: a reply's length without max_tokens
MESSAGES = [{"role": "user", "content": "Tell me about the weather"}]


@pytest.fixture(scope="module")
def neuron(start_neuron: Callable[..., NeuronProcess], model_root: Path) -> NeuronProcess:
    """One neuron for the module, the demo model preloaded from models.toml."""
    neuron = start_neuron(
        model_roots=[model_root],
        models=[
            {
                "id": "tiny",
                "source": "tiny",
                "harness": "transformers",
                "context_length": CONTEXT,
                "default_max_tokens": DEFAULT_MAX_TOKENS,
            }
        ],
        preload=["tiny"],
        harnesses=["transformers"],
        cpu_memory_budget_gb=2.0,
    )
    neuron.wait_for(lambda s: [m["state"] for m in s["models"]] == ["loaded"], timeout=60)
    return neuron


@pytest.fixture
async def client(neuron: NeuronProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=neuron.url + "/v1", api_key=neuron.token, max_retries=0)
    yield client
    await client.close()  # not at garbage collection, on a closed loop


async def greedy(
    client: openai.AsyncOpenAI, max_tokens: int, **extra: object
) -> openai.types.chat.ChatCompletion:
    return await client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=max_tokens,
        temperature=0,
        **extra,  # type: ignore[arg-type]
    )


async def test_non_stream_reports_length_and_usage(client: openai.AsyncOpenAI) -> None:
    completion = await greedy(client, 12)
    choice = completion.choices[0]
    assert choice.finish_reason == "length" and choice.message.content
    assert completion.usage is not None and completion.usage.completion_tokens == 12


async def test_a_request_without_max_tokens_stops_at_the_model_default(
    client: openai.AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(
        model="tiny", messages=MESSAGES, extra_body={"ignore_eos": True}
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == DEFAULT_MAX_TOKENS


async def test_stream_matches_non_stream_and_reports_usage(client: openai.AsyncOpenAI) -> None:
    expected = (await greedy(client, 12)).choices[0].message.content
    stream = await client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12


async def test_stop_string_cuts_the_text(client: openai.AsyncOpenAI) -> None:
    full = (await greedy(client, 24)).choices[0].message.content or ""
    stop = full[8:11]
    assert len(stop) == 3
    completion = await greedy(client, 24, stop=[stop])
    assert completion.choices[0].message.content == full[: full.index(stop)]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].model_extra == {"stop_reason": stop}, "vLLM-style extension"


async def test_only_a_prompt_that_does_not_fit_is_refused(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "go " * CONTEXT}], max_tokens=1
        )
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "context_length_exceeded"
    assert error["message"].startswith(f"This model's maximum context length is {CONTEXT} tokens.")
    assert error["message"].endswith("Please reduce the length of the messages.")


async def test_unknown_model_is_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "model_not_found"


async def test_wrong_token_is_401(neuron: NeuronProcess) -> None:
    bad = openai.AsyncOpenAI(base_url=neuron.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    await bad.close()


async def test_models_lists_the_resident_model(client: openai.AsyncOpenAI) -> None:
    assert [m.id async for m in client.models.list()] == ["tiny"]


async def test_tokenize_counts_like_the_completion_prompt(
    client: openai.AsyncOpenAI, neuron: NeuronProcess
) -> None:
    usage = (await greedy(client, 1)).usage
    status, body = neuron.api("POST", "/v1/tokenize", {"model": "tiny", "messages": MESSAGES})
    assert status == 200 and usage is not None
    assert (body["count"], body["max_model_len"]) == (usage.prompt_tokens, CONTEXT)


async def test_four_concurrent_streams_complete(client: openai.AsyncOpenAI) -> None:
    async def one(i: int) -> tuple[str, str | None]:
        stream = await client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": f"story number {i}"}],
            max_tokens=24,
            stream=True,
        )
        text, finish = "", None
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        return text, finish

    results = await asyncio.gather(*(one(i) for i in range(4)))
    assert all(finish in {"stop", "length"} for _, finish in results)


async def test_hang_up_mid_stream_frees_the_slot(
    client: openai.AsyncOpenAI, neuron: NeuronProcess
) -> None:
    # Greedy on this prompt does not stop early (checked first): ~4000 tokens take over 8 s here,
    # so the slot coming back within 3 s (slack for a loaded CI box) means the hang-up cancelled
    # the sequence.
    assert (await greedy(client, 40)).choices[0].finish_reason == "length"
    stream = await client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=CONTEXT - 100,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    await anext(aiter(stream))
    assert neuron.api("GET", "/status")[1]["in_flight"] == 1
    await stream.close()
    neuron.wait_for(lambda s: s["in_flight"] == 0 and s["models"][0]["in_flight"] == 0, timeout=3)


async def test_concurrent_greedy_requests_equal_their_sequential_answers(
    client: openai.AsyncOpenAI,
) -> None:
    """Short prompts arriving together share prefill passes (packed under one mask); over real
    HTTP each must still get exactly the answer it gets alone."""

    async def answer(i: int) -> str | None:
        completion = await client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": f"question {i}: {'why ' * i}"}],
            max_tokens=10,
            temperature=0,
        )
        return completion.choices[0].message.content

    alone = [await answer(i) for i in range(8)]
    assert await asyncio.gather(*(answer(i) for i in range(8))) == alone


async def test_a_short_request_is_answered_during_long_prefills(
    start_neuron: Callable[..., NeuronProcess], model_root: Path
) -> None:
    """With 32 prefill tokens an iteration, three ~3.5k-token prompts take ~330 iterations; a
    short request sent once they are in flight jumps the queue (admission.py) and completes
    while they still prefill. First come, first served, it would wait for all three."""
    neuron = start_neuron(
        model_roots=[model_root],
        models=[{"id": "tiny", "source": "tiny", "harness": "transformers"}],
        preload=["tiny"],
        harnesses=["transformers"],
        cpu_memory_budget_gb=2.0,
        max_batch_tokens=32,
    )
    neuron.wait_for(lambda s: [m["state"] for m in s["models"]] == ["loaded"], timeout=60)
    client = openai.AsyncOpenAI(base_url=neuron.url + "/v1", api_key=neuron.token, max_retries=0)
    short = [{"role": "user", "content": "hi"}]
    count = neuron.api("POST", "/v1/tokenize", {"model": "tiny", "messages": short})[1]["count"]
    assert count < 16  # its prefill fits in one step's express lane (half the budget)

    async def ask(text: str) -> str | None:
        completion = await client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": text}],
            max_tokens=1,
            temperature=0,
        )
        return completion.choices[0].finish_reason

    first_turns = [
        asyncio.create_task(ask(n + " ".join(f"line{i}" for i in range(700)))) for n in "abc"
    ]
    await asyncio.to_thread(neuron.wait_for, lambda s: s["in_flight"] == 3, 10)
    assert await ask("hi") == "length"
    assert not all(turn.done() for turn in first_turns)
    assert await asyncio.gather(*first_turns) == ["length"] * 3
    await client.close()


def test_the_log_holds_lines_not_progress_bars(neuron: NeuronProcess) -> None:
    """Weight loading (and a GGUF's conversion) draws tqdm bars; a server log gets none."""
    text = neuron.log_text()
    assert "loaded tiny on cpu" in text
    assert "\r" not in text and "it/s]" not in text, text[-2000:]
