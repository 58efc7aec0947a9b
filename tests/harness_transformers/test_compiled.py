"""The ``compiled_decode`` opt-in: decode steps through torch.compile, batches padded to buckets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from cortex_transformers import cpu_kernels
from cortex_transformers.attention import SLOTS
from cortex_transformers.compiled import _attention_takes_slots, buckets
from cortex_transformers.harness import TransformersHarness, TransformersModel
from cortex_transformers.kvcache import KVPool

from cortex.errors import InvalidRequest
from cortex.neuron.harness import LoadOptions, SamplingParams
from cortex.protocol.neuron import LoadRequest
from tests.harness_transformers.conftest import load


def test_buckets_are_powers_of_two_up_to_the_batch_and_no_larger_than_16() -> None:
    assert buckets(1) == (1,)
    assert buckets(5) == (1, 2, 4, 5)
    assert buckets(16) == (1, 2, 4, 8, 16)
    assert buckets(64) == (1, 2, 4, 8, 16)  # larger steps run eager


def test_the_harness_says_it_can_compile_decode() -> None:
    assert TransformersHarness().info().compiled_decode


@pytest.mark.parametrize(
    ("fields", "device", "reason"),
    [
        ({"quantization": "8bit"}, "cpu", "unquantised"),  # bitsandbytes: not checked
        ({"task": "embed"}, "cpu", "generate"),
        ({}, "cuda:0", "CPU only"),
    ],
)
def test_compiled_decode_is_refused_where_it_is_not_checked(
    demo_dir: Path, fields: dict[str, str], device: str, reason: str
) -> None:
    request = LoadRequest(
        model="demo",
        source=str(demo_dir),
        compiled_decode=True,
        **fields,  # type: ignore[arg-type]
    )
    with pytest.raises(InvalidRequest, match=reason) as err:
        TransformersHarness().load(request, str(demo_dir), device, LoadOptions(), lambda f, s: None)
    assert err.value.param == "compiled_decode"


async def _replies(model: TransformersModel, prompts: list[list[int]]) -> list[list[str]]:
    params = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)

    async def one(prompt: list[int]) -> list[str]:
        return [event.text async for event in model.generate(prompt, params)]

    return await asyncio.gather(*(one(p) for p in prompts))


@pytest.mark.slow
def test_a_compiled_engine_decodes_as_eager_does(demo_dir: Path, demo: TransformersModel) -> None:
    """Greedy replies through the compiled step (buckets 1, 2 and 4; ragged rows; 3 rows padded
    to 4) equal eager's on the demo model. Compiling three graphs takes ~60 s here."""
    options = LoadOptions(max_concurrency=4)
    compiled = load(demo_dir, options, compiled_decode=True)
    try:
        # Where cortex's CPU kernels run, attention reads the pool in place (paged_decode.cpp).
        assert compiled._compiled is not None
        assert compiled._compiled.in_place == cpu_kernels.loaded()
        prompts = [list(range(5, 17)), list(range(30, 39)), list(range(50, 70))]
        for group in ([prompts[0]], prompts[:2], prompts):
            got = asyncio.run(_replies(compiled, group))
            assert got == asyncio.run(_replies(demo, group))
    finally:
        compiled.unload()


@pytest.mark.slow
def test_a_compiled_int4_engine_decodes_as_eager_int4_does(demo_dir: Path) -> None:
    """The CPU kernels' int4 linears compile too (one and two rows; ~30 s here)."""
    options = LoadOptions(max_concurrency=2)
    eager = load(demo_dir, options, quantization="int4")
    compiled = load(demo_dir, options, quantization="int4", compiled_decode=True)
    try:
        prompts = [list(range(5, 17)), list(range(30, 39))]
        for group in ([prompts[0]], prompts):
            assert asyncio.run(_replies(compiled, group)) == asyncio.run(_replies(eager, group))
    finally:
        compiled.unload()
        eager.unload()


@pytest.mark.slow
def test_compiled_models_of_one_class_keep_their_own_graphs(
    demo_dir: Path, demo: TransformersModel
) -> None:
    """An fp32 and an int4 copy of one model class, compiled in one process: each decodes as
    its eager twin. Their graphs keep no guards on the model (``_input_guards``), so only
    ``isolate_recompiles`` keeps the int4 copy's steps off the fp32 graph (without it they ran
    that graph and failed looking for a ``weight``). ~20 s here."""
    options = LoadOptions(max_concurrency=1)
    eager_int4 = load(demo_dir, options, quantization="int4")
    fp32 = load(demo_dir, options, compiled_decode=True)
    int4 = load(demo_dir, options, quantization="int4", compiled_decode=True)
    try:
        prompt = [list(range(5, 17))]
        for _ in range(2):  # alternating steps: each lookup finds its own model's graph
            assert asyncio.run(_replies(fp32, prompt)) == asyncio.run(_replies(demo, prompt))
            assert asyncio.run(_replies(int4, prompt)) == asyncio.run(_replies(eager_int4, prompt))
    finally:
        for model in (fp32, int4, eager_int4):
            model.unload()


@pytest.mark.skipif(not cpu_kernels.loaded(), reason="cortex's CPU kernels do not run here")
def test_attention_reads_in_place_only_where_the_model_passes_the_slots_on(
    demo: TransformersModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose forward did not hand ``cortex_slots`` on would be given the whole pool as
    its keys: the load-time check finds that and keeps the gathered path."""
    model = demo._model
    assert model is not None
    pool = KVPool(model, 64, torch.device("cpu"))
    assert _attention_takes_slots(model, pool)
    forward = model.forward

    def dropping_slots(**inputs: Any) -> Any:
        inputs.pop(SLOTS, None)
        return forward(**inputs)

    monkeypatch.setattr(model, "forward", dropping_slots)
    assert not _attention_takes_slots(model, pool)
