from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import torch
from cortex_transformers.harness import TransformersModel
from transformers import AutoModelForCausalLM

from cortex.errors import ContextLengthExceeded, InvalidRequest, Unavailable
from cortex.neuron.harness import LoadOptions, SamplingParams, TokenEvent

from .conftest import load

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


async def _collect(
    model: TransformersModel, prompt: list[int], params: SamplingParams
) -> list[TokenEvent]:
    return [_plain(event) async for event in model.generate(prompt, params)]


def _plain(event: TokenEvent) -> TokenEvent:
    """The output alone, without ``cached_tokens`` (which depends on what ran before)."""
    return msgspec.structs.replace(event, cached_tokens=0)


def _prompt(model: TransformersModel, text: str) -> list[int]:
    return model.encode_chat([{"role": "user", "content": text}], None)


async def _wait_idle(model: TransformersModel) -> None:
    for _ in range(200):
        if model.active == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{model.active} sequences still active")


def _hf_greedy(demo_dir: Path, prompt: list[int], n: int) -> list[int]:
    hf = AutoModelForCausalLM.from_pretrained(demo_dir, local_files_only=True)
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=-1)
    return out[0, len(prompt) :].tolist()


async def test_greedy_output_matches_transformers_generate(demo, demo_dir: Path) -> None:
    prompt = _prompt(demo, "hello there")
    events = await _collect(demo, prompt, GREEDY)
    expected = demo._tokenizer.decode(_hf_greedy(demo_dir, prompt, 12), skip_special_tokens=True)
    assert "".join(e.text for e in events) == expected
    assert events == await _collect(demo, prompt, GREEDY)


async def test_max_new_tokens_finishes_with_length(demo) -> None:
    events = await _collect(demo, _prompt(demo, "count"), GREEDY)
    assert [e.completion_tokens for e in events] == list(range(1, 13))
    assert [e.finish_reason for e in events] == [None] * 11 + ["length"]


async def test_same_seed_same_sample_and_other_seeds_differ(demo) -> None:
    prompt = _prompt(demo, "tell a story")
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=100, seed=7)
    first = await _collect(demo, prompt, params)
    assert first == await _collect(demo, prompt, params)
    others = [
        await _collect(demo, prompt, SamplingParams(max_new_tokens=16, temperature=1.0, seed=s))
        for s in (1, 2)
    ]
    assert first not in others


async def test_concurrent_generations_match_sequential_greedy(demo) -> None:
    prompts = [_prompt(demo, "x " * i) for i in (1, 5, 9, 20)]  # different lengths: padding
    sequential = [await _collect(demo, p, GREEDY) for p in prompts]
    assert await asyncio.gather(*(_collect(demo, p, GREEDY) for p in prompts)) == sequential
    await _wait_idle(demo)


async def test_joining_and_leaving_mid_decode_keeps_outputs_exact(demo) -> None:
    """A joins, B joins after A's 5th token, A (the longer prompt) leaves first: rows realign."""
    a_prompt = _prompt(demo, "long prompt " * 12)
    a_params = SamplingParams(max_new_tokens=200, temperature=0)
    b_prompt = _prompt(demo, "short")
    b_params = SamplingParams(max_new_tokens=300, temperature=0)
    expected = [await _collect(demo, a_prompt, a_params), await _collect(demo, b_prompt, b_params)]
    assert [e[-1].completion_tokens for e in expected] == [200, 300]  # no early EOS
    a_stream = demo.generate(a_prompt, a_params)
    a_events = [_plain(await anext(a_stream)) for _ in range(5)]
    b_task = asyncio.create_task(_collect(demo, b_prompt, b_params))
    a_events += [_plain(event) async for event in a_stream]
    assert [a_events, await b_task] == expected
    await _wait_idle(demo)


async def test_closing_a_generation_frees_its_slot(demo) -> None:
    long = SamplingParams(max_new_tokens=400, temperature=0.0)
    other = asyncio.create_task(_collect(demo, _prompt(demo, "keep going"), GREEDY))
    stream = demo.generate(_prompt(demo, "stop soon"), long)
    seen = [await anext(stream), await anext(stream)]
    await stream.aclose()
    assert [e.completion_tokens for e in seen] == [1, 2]
    assert (await other)[-1].finish_reason in ("length", "stop")
    await _wait_idle(demo)


async def test_cancelling_the_consumer_task_frees_its_slot(demo) -> None:
    long = SamplingParams(max_new_tokens=100_000, temperature=0.0)
    generating = asyncio.Event()

    async def consume() -> None:
        async for _ in demo.generate(_prompt(demo, "forever"), long):
            generating.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(generating.wait(), 30)  # it holds a slot now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_idle(demo)


async def test_eos_from_generation_config_finishes_with_stop(
    demo, demo_dir: Path, tmp_path: Path
) -> None:
    prompt = _prompt(demo, "hello there")
    third = _hf_greedy(demo_dir, prompt, 3)[2]
    model_dir = Path(shutil.copytree(demo_dir, tmp_path / "eos"))
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["eos_token_id"] = [*config["eos_token_id"], third]
    (model_dir / "generation_config.json").write_text(json.dumps(config))
    model = load(model_dir)
    try:
        events = await _collect(model, prompt, GREEDY)
    finally:
        model.unload()
    assert events[-1] == TokenEvent(text="", completion_tokens=2, finish_reason="stop")
    assert len(events) == 3


async def test_context_limit_finishes_with_length(demo_dir: Path) -> None:
    model = load(demo_dir, context_length=40)
    try:
        prompt = _prompt(model, "hi")
        events = await _collect(model, prompt, GREEDY)
        assert events[-1].finish_reason == "length"
        assert events[-1].completion_tokens == min(12, 40 - len(prompt))
        with pytest.raises(ContextLengthExceeded, match="However, your messages resulted in"):
            await _collect(model, _prompt(model, "word " * 50), GREEDY)
    finally:
        model.unload()


async def test_out_of_vocabulary_prompt_ids_are_invalid(demo) -> None:
    with pytest.raises(InvalidRequest):
        await _collect(demo, [1, 2, 10**9], GREEDY)


async def test_unload_ends_running_generations(demo_dir: Path) -> None:
    model = load(demo_dir)
    stream = model.generate(_prompt(model, "hi"), SamplingParams(max_new_tokens=100_000))
    await anext(stream)
    await asyncio.to_thread(model.unload)
    with pytest.raises(Unavailable):
        async for _ in stream:
            pass
    model.unload()  # idempotent


@pytest.fixture
def chunked(demo_dir: Path) -> Iterator[TransformersModel]:
    """The demo model with a 4-token step budget: prompts are prefilled a few tokens at a time."""
    model = load(demo_dir, LoadOptions(max_batch_tokens=4))
    yield model
    model.unload()


async def test_chunked_prefill_equals_whole_prefill(
    chunked: TransformersModel, demo_dir: Path
) -> None:
    prompt = _prompt(chunked, "a long prompt that takes many chunks " * 3)
    assert len(prompt) > 40
    events = await _collect(chunked, prompt, GREEDY)
    expected = chunked._tokenizer.decode(_hf_greedy(demo_dir, prompt, 12), skip_special_tokens=True)
    assert "".join(e.text for e in events) == expected


async def test_long_prefill_interleaves_with_running_streams(chunked: TransformersModel) -> None:
    """While a long prompt prefills chunk by chunk, a running stream keeps getting tokens."""
    running = chunked.generate(
        _prompt(chunked, "go"), SamplingParams(max_new_tokens=400, temperature=0)
    )
    await anext(running)
    long_prompt = _prompt(chunked, "context " * 40)
    chunks = -(-len(long_prompt) // 4)
    joiner = asyncio.create_task(anext(chunked.generate(long_prompt, GREEDY)))
    during = 0
    while not joiner.done():
        await anext(running)
        during += 1
    await joiner
    await running.aclose()
    assert during >= chunks // 2, f"{during} tokens streamed while {chunks} chunks prefilled"
    await _wait_idle(chunked)
