"""The paged engine on the tiny demo model: prefix reuse, preemption, freeing, batching, faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import jsonschema
import pytest
import torch
from cortex_transformers import sampling
from cortex_transformers.block_manager import BlockManager, BlockTable
from cortex_transformers.generation import Generation, Status
from cortex_transformers.harness import TransformersModel
from cortex_transformers.kvcache import KVPool, bytes_per_token
from cortex_transformers.runner import ModelRunner
from cortex_transformers.scheduler import Scheduler
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
)

from cortex.errors import InternalError
from cortex.neuron.constraints import JsonAnswer
from cortex.neuron.harness import LoadOptions, SamplingParams

from .conftest import load
from .test_generate import GREEDY, _collect, _hf_greedy, _plain, _prompt, _wait_idle

SYSTEM = "You are a coding agent. Tools: read write edit search. " * 6


def _conversation(model: TransformersModel, turns: int) -> list[int]:
    messages = [{"role": "system", "content": SYSTEM}]
    for t in range(turns):
        messages += [
            {"role": "user", "content": f"step {t}: fix the failing test in module {t}"},
            {"role": "assistant", "content": f"done with step {t}"},
        ]
    return model.encode_chat([*messages, {"role": "user", "content": "next"}], None)


async def _events(model: TransformersModel, prompt: list[int], params: SamplingParams) -> list:
    return [event async for event in model.generate(prompt, params)]


def _blocks(model: TransformersModel):  # type: ignore[no-untyped-def]
    assert model._scheduler is not None
    return model._scheduler.blocks


async def test_prefix_reuse_gives_the_cold_run_output(demo_dir: Path) -> None:
    model = load(demo_dir)
    try:
        turn1, turn2 = _conversation(model, 1), _conversation(model, 2)
        first = await _events(model, turn1, GREEDY)
        assert first[-1].cached_tokens == 0
        warm = await _events(model, turn2, GREEDY)
        shared = next(i for i, (a, b) in enumerate(zip(turn1, turn2, strict=False)) if a != b)
        block = _blocks(model).block_size
        assert warm[-1].cached_tokens == shared // block * block > 0
        cold = load(demo_dir)
        try:
            assert [_plain(e) for e in warm] == await _collect(cold, turn2, GREEDY)
        finally:
            cold.unload()
        expected = model._tokenizer.decode(
            _hf_greedy(demo_dir, turn2, 12), skip_special_tokens=True
        )
        assert "".join(e.text for e in warm) == expected
        again = await _events(model, turn2, GREEDY)  # all but the last token's block is cached
        assert again[-1].cached_tokens == (len(turn2) - 1) // block * block
        assert [_plain(e) for e in again] == [_plain(e) for e in warm]
    finally:
        model.unload()


async def test_sixteen_mixed_length_sequences_equal_their_sequential_runs(demo) -> None:
    prompts = [_prompt(demo, "word " * (3 * i) + f"question {i}") for i in range(16)]
    params = [SamplingParams(max_new_tokens=8 + 4 * (i % 5), temperature=0) for i in range(16)]
    sequential = [await _collect(demo, p, s) for p, s in zip(prompts, params, strict=True)]
    together = await asyncio.gather(
        *(_collect(demo, p, s) for p, s in zip(prompts, params, strict=True))
    )
    assert together == sequential
    await _wait_idle(demo)


@pytest.fixture
def tiny_pool(demo, demo_dir: Path) -> Iterator[TransformersModel]:
    """The demo model with a 128-token context and a KV pool of 10 blocks (160 tokens)."""
    per_block = bytes_per_token(demo._model) * 16
    weights = demo._model.get_memory_footprint()
    options = LoadOptions(memory_budget_bytes=weights + 2 * 10 * per_block, kv_cache_share=0.5)
    model = load(demo_dir, options, context_length=128)
    assert _blocks(model).num_blocks == 10
    yield model
    model.unload()


async def test_preemption_under_a_tiny_pool_loses_no_request(tiny_pool: TransformersModel) -> None:
    prompts = [_prompt(tiny_pool, "go " * i) for i in range(6)]  # 12-17 tokens each
    params = SamplingParams(max_new_tokens=60, temperature=0)
    sequential = [await _collect(tiny_pool, p, params) for p in prompts]
    assert sum(events[-1].completion_tokens for events in sequential) >= 300
    together = await asyncio.gather(*(_collect(tiny_pool, p, params) for p in prompts))
    assert together == sequential  # 6 x ~75 tokens in a 160-token pool
    assert tiny_pool._scheduler is not None and tiny_pool._scheduler.preempted > 0
    await _wait_idle(tiny_pool)
    assert _blocks(tiny_pool).free_blocks == 10


async def test_a_hang_up_frees_its_blocks(demo) -> None:
    blocks = _blocks(demo)
    await _wait_idle(demo)
    stream = demo.generate(
        _prompt(demo, "a long answer please"), SamplingParams(max_new_tokens=500)
    )
    await anext(stream)
    await anext(stream)
    assert blocks.free_blocks < blocks.num_blocks
    await stream.aclose()
    await _wait_idle(demo)  # finish frees a sequence's blocks before it leaves the batch
    assert blocks.free_blocks == blocks.num_blocks


async def test_a_poison_temperature_is_greedy_and_other_streams_finish(demo) -> None:
    prompts = [_prompt(demo, f"stream {i}") for i in range(4)]
    sequential = [await _collect(demo, p, GREEDY) for p in prompts]
    poison = SamplingParams(max_new_tokens=12, temperature=1.8e-39)
    results = await asyncio.gather(
        _collect(demo, prompts[0], poison), *(_collect(demo, p, GREEDY) for p in prompts[1:])
    )
    assert results == sequential


async def test_a_row_that_fails_fails_alone(demo, monkeypatch: pytest.MonkeyPatch) -> None:
    """Test double: sampling raises for a row marked with top_k=7 from its third token on, so
    the failure hits a decode step it shares with healthy rows."""
    real = sampling.Sampler.uniform
    draws: list[int] = []

    def uniform(self: sampling.Sampler) -> float:
        if self.top_k == 7:
            draws.append(1)
            if len(draws) > 2:
                raise RuntimeError("poisoned row")
        return real(self)

    monkeypatch.setattr(sampling.Sampler, "uniform", uniform)
    prompts = [_prompt(demo, f"victim {i}") for i in range(3)]
    # Long and EOS-proof, so the healthy rows are surely still decoding when the poison fails.
    long = SamplingParams(max_new_tokens=200, temperature=0, ignore_eos=True)
    sequential = [await _collect(demo, p, long) for p in prompts]
    decoding = [asyncio.Event() for _ in prompts]

    async def healthy_run(i: int) -> list:
        events = []
        async for event in demo.generate(prompts[i], long):
            events.append(_plain(event))
            decoding[i].set()
        return events

    healthy = [asyncio.create_task(healthy_run(i)) for i in range(len(prompts))]
    # The healthy rows are decoding (200 steps to go) when the poisoned one joins.
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in decoding)), timeout=30)
    poisoned = SamplingParams(max_new_tokens=40, temperature=1.0, top_k=7)
    with pytest.raises(InternalError, match="poisoned row"):
        await _collect(demo, _prompt(demo, "poison"), poisoned)
    assert await asyncio.gather(*healthy) == sequential
    assert len(draws) == 4  # two tokens, then the batched step and its retry alone
    await _wait_idle(demo)


async def _to_the_end(seq: Generation) -> list:
    items = [await seq.queue.get()]
    while not isinstance(items[-1], BaseException) and items[-1].finish_reason is None:
        items.append(await seq.queue.get())
    return items


async def test_only_the_worker_ends_a_sequence_and_only_once(demo) -> None:
    """The event loop only asks for a cancellation: one that crosses a sequence's last token
    leaves it finished; one in flight ends it and frees its blocks before the next sequence
    (submitted after it) is run."""
    scheduler = demo._scheduler
    assert scheduler is not None
    await _wait_idle(demo)
    done = _sequence(_prompt(demo, "a short answer"))
    scheduler.submit(done)
    assert (await _to_the_end(done))[-1].finish_reason == "length"
    scheduler.cancel(done)  # too late: it has ended
    going = Generation(
        _prompt(demo, "a long answer"),
        SamplingParams(max_new_tokens=500, ignore_eos=True),
        eos_ids=frozenset(),
        context_length=4096,
        decode=lambda ids: "",
        loop=asyncio.get_running_loop(),
    )
    scheduler.submit(going)
    await going.queue.get()
    scheduler.cancel(going)
    after = _sequence(_prompt(demo, "the next one"))
    scheduler.submit(after)  # the worker takes the cancellations first
    assert (await _to_the_end(after))[-1].finish_reason == "length"
    assert done.status is Status.FINISHED and after.status is Status.FINISHED
    assert going.status is Status.CANCELLED and not going.table.blocks
    assert _blocks(demo).free_blocks == _blocks(demo).num_blocks


def _runner(model: TransformersModel | PreTrainedModel) -> tuple[ModelRunner, BlockManager]:
    """A runner with a pool of its own over a model's weights (a loaded model's worker keeps
    its own)."""
    weights = model._model if isinstance(model, TransformersModel) else model
    assert weights is not None
    blocks = BlockManager(64)
    pool = KVPool(weights, 64 * blocks.block_size, torch.device("cpu"))
    return ModelRunner(weights, pool, blocks, torch.device("cpu")), blocks


def _sequence(tokens: list[int]) -> Generation:
    return Generation(
        tokens,
        GREEDY,
        eos_ids=frozenset(),
        context_length=4096,
        decode=lambda ids: "",
        loop=asyncio.get_running_loop(),
    )


def _chunk(blocks: BlockManager, tokens: list[int]) -> tuple[Generation, int]:
    """A sequence admitted into ``blocks`` (its cached prefix mapped) and the rest to prefill."""
    seq = _sequence(tokens)
    seq.computed = blocks.allocate(seq.table, tokens)
    return seq, len(tokens) - seq.computed


def _random_model(kind: str, vocab: int) -> PreTrainedModel:
    """A tiny random-weight model of another architecture (Llama: SmolLM2's; Mistral with a
    sliding window, which must not be packed)."""
    shape = {
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "attn_implementation": "sdpa",
    }
    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**shape)).eval()
    return MistralForCausalLM(MistralConfig(sliding_window=24, **shape)).eval()


@pytest.mark.parametrize(("kind", "packs"), [("qwen3", True), ("llama", True), ("mistral", False)])
async def test_a_packed_prefill_gives_each_sequence_its_own_logits(
    demo, kind: str, packs: bool
) -> None:
    model = demo if kind == "qwen3" else _random_model(kind, demo._vocab_size)
    prompts = [_prompt(demo, f"{i} " + "word " * n + "end") for i, n in enumerate((3, 11, 7))]
    reuse = prompts[1][:32] + _prompt(demo, "a different tail")  # 32 tokens of it cached
    with torch.inference_mode():
        alone, blocks = _runner(model)
        expected = [alone.prefill([_chunk(blocks, p)])[0] for p in (*prompts, reuse)]

        packed, blocks = _runner(model)
        assert packed.packs is packs
        got = list(packed.prefill([_chunk(blocks, p) for p in prompts]))
        seq, count = _chunk(blocks, reuse)
        assert seq.computed == 32
        got += packed.prefill([(seq, count), _chunk(blocks, _prompt(demo, "unrelated"))])[:1]
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have, want, atol=1e-4, rtol=1e-4)


@asynccontextmanager
async def _arriving_together(scheduler: Scheduler, count: int) -> AsyncIterator[None]:
    """Test double on the scheduler's entry: submissions made in the block are held back until
    ``count`` of them arrived, then submitted in one call, so one iteration sees them all."""
    held: list[Generation] = []
    all_in = asyncio.Event()

    def hold(*seqs: Generation) -> None:
        held.extend(seqs)
        if len(held) == count:
            all_in.set()

    scheduler.submit = hold  # type: ignore[method-assign]
    try:
        yield
        await asyncio.wait_for(all_in.wait(), timeout=10)
    finally:
        del scheduler.submit
        scheduler.submit(*held)


async def test_short_prompts_arriving_together_share_prefill_passes(demo) -> None:
    """Test spy on the runner: counts forward passes and the chunks in each."""
    scheduler = demo._scheduler
    assert scheduler is not None
    await _wait_idle(demo)
    prompts = [_prompt(demo, f"question number {i} about {'x' * i}") for i in range(8)]
    sequential = [await _collect(demo, p, GREEDY) for p in prompts]
    passes: list[int] = []
    real = scheduler.runner.prefill

    def counting(chunks):  # type: ignore[no-untyped-def]
        passes.append(len(chunks))
        return real(chunks)

    scheduler.runner.prefill = counting  # type: ignore[method-assign]
    try:
        async with _arriving_together(scheduler, len(prompts)):
            tasks = [asyncio.create_task(_collect(demo, p, GREEDY)) for p in prompts]
        together = await asyncio.gather(*tasks)
    finally:
        del scheduler.runner.prefill
    assert together == sequential
    assert sum(passes) == 8 and len(passes) <= 2, passes


async def test_sessions_arriving_together_compute_their_shared_prefix_once(demo) -> None:
    scheduler = demo._scheduler
    assert scheduler is not None
    await _wait_idle(demo)
    system = {"role": "system", "content": "Shared agent instructions, tools and rules. " * 8}
    prompts = [
        demo.encode_chat([system, {"role": "user", "content": f"session {i} asks"}], None)
        for i in range(4)
    ]
    shared = next(i for i, (a, b) in enumerate(zip(*prompts[:2], strict=False)) if a != b)
    assert shared >= 64
    async with _arriving_together(scheduler, len(prompts)):
        tasks = [
            asyncio.create_task(_events(demo, p, SamplingParams(max_new_tokens=2, seed=i)))
            for i, p in enumerate(prompts)
        ]
    cached = [events[-1].cached_tokens for events in await asyncio.gather(*tasks)]
    block = _blocks(demo).block_size
    # The first computes the shared blocks (or finds them from an earlier test); the rest reuse.
    assert all(c >= shared // block * block for c in cached[1:]), cached


async def test_only_chunks_that_waste_little_attention_share_a_pass(demo) -> None:
    runner, _ = _runner(demo)

    def chunk(cached: int, new: int) -> tuple[Generation, int]:
        seq = _sequence(list(range(cached + new)))
        seq.computed = cached  # as if a cached prefix of that length had been mapped
        return seq, new

    short = [chunk(0, 20) for _ in range(9)]
    assert all(runner.joins(short[:i], short[i]) for i in range(1, 8))  # 8 x 20: 22k wasted
    assert not runner.joins(short[:9], chunk(0, 20))  # 10 x 20: 36k
    agents = [chunk(2400, 150), chunk(2400, 150)]  # two agent turns over a cached prompt
    assert not runner.joins(agents[:1], agents[1])
    assert not runner.joins([chunk(0, 200)], chunk(0, 200))  # 80k
    assert runner.joins([chunk(0, 2)], chunk(0, 2000))  # a tiny prompt rides along: 8k
    runner.packs = False  # a model whose attention ignores prepared masks
    assert not runner.joins(short[:1], short[1])


async def test_shorter_prompts_do_not_wait_behind_a_long_prefill(demo_dir: Path) -> None:
    """A 2k-token prompt prefills 64 tokens an iteration. A short prompt and a medium one (more
    than the 32-token express lane: chunked over iterations) sent once it has begun get their
    first tokens before it, shortest first, and every answer equals its run alone."""
    model = load(demo_dir, LoadOptions(max_batch_tokens=64))
    try:
        scheduler = model._scheduler
        assert scheduler is not None
        prompts = {
            "long": _prompt(model, "read this file: " + " ".join(f"line{i}" for i in range(600))),
            "short": _prompt(model, "and a quick question"),
            "medium": _prompt(model, "then this: " + " ".join(f"word{i}" for i in range(30))),
        }
        assert len(prompts["long"]) > 30 * 64 and len(prompts["short"]) < 31
        assert 64 < len(prompts["medium"]) < 200
        loop = asyncio.get_running_loop()
        started = asyncio.Event()
        real = scheduler.runner.prefill

        def spying(chunks):  # type: ignore[no-untyped-def]  # test spy: the long one has begun
            loop.call_soon_threadsafe(started.set)
            return real(chunks)

        scheduler.runner.prefill = spying  # type: ignore[method-assign]
        firsts: list[str] = []

        async def recorded(name: str) -> list:
            events = []
            async for event in model.generate(prompts[name], GREEDY):
                if not events:
                    firsts.append(name)
                events.append(_plain(event))
            return events

        long_task = asyncio.create_task(recorded("long"))
        await started.wait()
        together = await asyncio.gather(long_task, recorded("medium"), recorded("short"))
        del scheduler.runner.prefill
        alone = [await _collect(model, prompts[name], GREEDY) for name in prompts]  # cache hits
    finally:
        model.unload()
    assert firsts == ["short", "medium", "long"]
    assert together == [alone[0], alone[2], alone[1]]


async def test_one_session_reads_its_kv_in_place_and_answers_as_the_gather_does(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Turn 2 is turn 1, the reply's own ids (as a real model's re-tokenize) and a new message:
    its blocks stay consecutive, so every forward pass of both turns reads the pool in place
    (test spy on KVPool.view), and the answer equals the one read through the gather."""
    model = load(demo_dir)
    try:
        params = SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)
        turn1 = _conversation(model, 0)
        reply = _hf_greedy(demo_dir, turn1, 40)
        turn2 = turn1 + reply + model.encode_chat([{"role": "user", "content": "next"}], None)
        in_place: list[bool] = []
        real_view = KVPool.view

        def spying(self, write, read, span=None):  # type: ignore[no-untyped-def]
            in_place.append(span is not None)
            return real_view(self, write, read, span)

        monkeypatch.setattr(KVPool, "view", spying)
        await _events(model, turn1, params)
        second = await _events(model, turn2, params)
        assert len(in_place) == 2 * 40 and all(in_place)
        assert second[-1].cached_tokens == (len(turn1) + 39) // 16 * 16  # the reply's blocks too
        monkeypatch.setattr(BlockTable, "span", lambda self, block_size, tokens: None)
        gathered = await _events(model, turn2, params)
        assert not any(in_place[80:])
    finally:
        model.unload()
    assert [_plain(e) for e in second] == [_plain(e) for e in gathered]


async def test_constrained_replies_survive_preemption_and_still_validate(
    tiny_pool: TransformersModel,
) -> None:
    """A preempted sequence is recomputed from its tokens; its grammar state, which only
    follows sampled tokens, carries on where it was (issue 21)."""
    schema = {
        "type": "object",
        "properties": {
            "words": {
                "type": "array",
                "items": {"enum": ["go", "stop", "wait"]},
                "minItems": 12,
                "maxItems": 12,
            }
        },
        "required": ["words"],
    }
    prompts = [_prompt(tiny_pool, "go " * i) for i in range(6)]
    params = SamplingParams(max_new_tokens=90, temperature=0, constraint=JsonAnswer(schema=schema))
    tiny_pool.prepare(params)
    replies = await asyncio.gather(*(_collect(tiny_pool, p, params) for p in prompts))
    assert tiny_pool._scheduler is not None and tiny_pool._scheduler.preempted > 0
    for events in replies:
        assert events[-1].finish_reason == "stop"
        jsonschema.validate(json.loads("".join(e.text for e in events)), schema)
    await _wait_idle(tiny_pool)
