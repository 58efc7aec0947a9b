"""Constrained decoding and the sampling fields of issue 21, on the random-weight demo model:
whatever the model would say, the reply parses and validates (jsonschema), and the rest of the
sampling fields change what they promise to change."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import msgspec
import pytest
import torch
from cortex_transformers.guide import Guide
from cortex_transformers.harness import TransformersModel

from cortex.errors import InvalidRequest
from cortex.neuron.constraints import JsonAnswer, ToolCalls, ToolSchema
from cortex.neuron.harness import SamplingParams
from cortex.neuron.tools import HermesParser

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            "required": ["lat", "lon"],
            "additionalProperties": False,
        },
    },
    "required": ["city", "unit", "days", "where"],
    "additionalProperties": False,
}
CLOCK = {"type": "object", "properties": {"zone": {"enum": ["utc", "local"]}}, "required": ["zone"]}
TOOLS = (
    ToolSchema(name="get_weather", parameters=WEATHER),
    ToolSchema(name="clock", parameters=CLOCK),
)


def _prompt(model: TransformersModel, text: str) -> list[int]:
    return model.encode_chat([{"role": "user", "content": text}], None)


async def _text(model: TransformersModel, prompt: list[int], params: SamplingParams) -> str:
    model.prepare(params)
    return "".join([event.text async for event in model.generate(prompt, params)])


@pytest.mark.parametrize("seed", range(6))
async def test_json_schema_answers_validate_whatever_the_model_says(
    demo: TransformersModel, seed: int
) -> None:
    params = SamplingParams(
        max_new_tokens=300, temperature=1.0, seed=seed, constraint=JsonAnswer(schema=WEATHER)
    )
    reply = await _text(demo, _prompt(demo, f"weather {seed}"), params)
    jsonschema.validate(json.loads(reply), WEATHER)


@pytest.mark.parametrize("seed", range(6))
async def test_forced_tool_calls_name_a_real_tool_with_valid_arguments(
    demo: TransformersModel, seed: int
) -> None:
    constraint = ToolCalls(
        tools=TOOLS, open="<tool_call>", close="</tool_call>", forced=True, parallel=False
    )
    params = SamplingParams(max_new_tokens=300, temperature=1.0, seed=seed, constraint=constraint)
    reply = await _text(demo, _prompt(demo, f"call something {seed}"), params)
    content, calls = HermesParser().parse_complete(reply)
    assert len(calls) == 1 and content is None, reply
    schema = {"get_weather": WEATHER, "clock": CLOCK}[calls[0].function.name]
    jsonschema.validate(json.loads(calls[0].function.arguments), schema)


async def test_a_named_tool_is_the_only_tool_called(demo: TransformersModel) -> None:
    constraint = ToolCalls(tools=TOOLS[1:], open="<tool_call>", close="</tool_call>", forced=True)
    params = SamplingParams(max_new_tokens=200, temperature=1.0, seed=3, constraint=constraint)
    reply = await _text(demo, _prompt(demo, "what time is it"), params)
    _, calls = HermesParser().parse_complete(reply)
    assert calls and {call.function.name for call in calls} == {"clock"}


async def test_a_grammar_is_compiled_once_per_content(demo: TransformersModel) -> None:
    schema = {"type": "object", "properties": {"only_here": {"type": "integer"}}}
    params = SamplingParams(max_new_tokens=4, constraint=JsonAnswer(schema=schema))
    before = demo.grammars.compiles
    demo.prepare(params)
    demo.prepare(msgspec.structs.replace(params, seed=5))
    assert demo.grammars.compiles == before + 1


async def test_a_schema_the_grammar_cannot_hold_is_refused_naming_the_field(
    demo: TransformersModel,
) -> None:
    bad = SamplingParams(max_new_tokens=4, constraint=JsonAnswer(schema={"type": "nonsense"}))
    with pytest.raises(InvalidRequest) as caught:
        demo.prepare(bad)
    assert caught.value.param == "response_format"


def test_a_lazy_guide_masks_only_inside_a_call(demo: TransformersModel) -> None:
    constraint = ToolCalls(
        tools=TOOLS[1:], open="<tool_call>", close="</tool_call>", forced=False, parallel=False
    )
    guide = Guide(constraint, demo.grammars, frozenset({demo._eos_ids and min(demo._eos_ids)}))
    tokenizer = demo._tokenizer
    for token in tokenizer.encode("Let me check. ", add_special_tokens=False):
        assert not guide.masks
        guide.accept(token)
    call = '<tool_call>\n{"name": "clock", "arguments": {"zone": "utc"}}\n</tool_call>'
    ids = tokenizer.encode(call, add_special_tokens=False)
    opened = False
    for token in ids:
        guide.accept(token)
        opened = opened or guide.masks
    assert opened and guide.masks  # a single call is complete: only the end may follow
    bitmask = torch.zeros(1, (demo._vocab_size + 31) // 32, dtype=torch.int32).numpy()
    guide.fill(bitmask, 0)
    allowed = {i for i in range(demo._vocab_size) if bitmask[0, i >> 5] >> (i & 31) & 1}
    assert allowed == {min(demo._eos_ids)}


async def test_greedy_logit_bias_forces_a_token(demo: TransformersModel) -> None:
    token = demo._tokenizer.encode("the", add_special_tokens=False)[0]
    params = SamplingParams(max_new_tokens=5, temperature=0, logit_bias={token: 100.0})
    events = [e async for e in demo.generate(_prompt(demo, "bias"), params)]
    assert [e.text for e in events] == [demo._decode([token])] * 5


async def test_repetition_penalty_makes_a_reply_repeat_less(demo: TransformersModel) -> None:
    prompt = _prompt(demo, "repeat after me")

    async def distinct(penalty: float) -> int:
        params = SamplingParams(
            max_new_tokens=60, temperature=0, ignore_eos=True, repetition_penalty=penalty
        )
        text = await _text(demo, prompt, params)
        return len(set(demo._tokenizer.encode(text, add_special_tokens=False)))

    assert await distinct(3.0) > await distinct(1.0)


async def test_logprobs_are_the_log_softmax_of_a_transformers_forward(
    demo: TransformersModel,
) -> None:
    prompt = _prompt(demo, "probabilities")
    params = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True, logprobs=5)
    events = [e async for e in demo.generate(prompt, params)]
    ids = list(prompt)
    assert demo._model is not None
    for event in events:
        assert event.logprobs is not None and len(event.logprobs) == 1
        entry = event.logprobs[0]
        with torch.inference_mode():
            logits = demo._model(input_ids=torch.tensor([ids])).logits[0, -1]
        expected = logits.float().log_softmax(-1)
        token = int(expected.argmax())
        assert abs(entry.logprob - float(expected[token])) < 1e-4
        assert len(entry.top) == 5 and abs(entry.top[0].logprob - float(expected.max())) < 1e-4
        ids.append(token)


async def test_penalties_in_one_batch_equal_each_request_alone(demo: TransformersModel) -> None:
    prompt = _prompt(demo, "batch of penalties")
    kinds = [
        SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True, repetition_penalty=2.0),
        SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True, frequency_penalty=1.5),
        SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True, presence_penalty=1.0),
        SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True, logit_bias={7: 5.0}),
        SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True),
    ]
    alone = [await _text(demo, prompt, params) for params in kinds]
    together = await asyncio.gather(*(_text(demo, prompt, params) for params in kinds))
    assert list(together) == alone


def test_a_lazy_tool_schema_the_grammar_cannot_hold_is_refused_before_generation(
    demo: TransformersModel,
) -> None:
    """Under ``auto`` no matcher is needed until the model opens a call, but the grammar is
    compiled up front: a bad schema is a 400, not an error in the middle of a stream."""
    bad = ToolSchema(name="broken", parameters={"type": "nonsense"})
    constraint = ToolCalls(tools=(bad,), open="<tool_call>", close="</tool_call>", forced=False)
    with pytest.raises(InvalidRequest) as caught:
        demo.prepare(SamplingParams(max_new_tokens=4, constraint=constraint))
    assert caught.value.param == "tools"
