"""Issue 21's fields through a real gateway and neuron on the demo model, with the official SDKs:
JSON answers in the OpenAI and Responses dialects, logprobs streamed and not, penalties and
logit bias honoured. A random-weight model says anything, so whatever parses here was made to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "count", "ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(
    start_neuron: Any, model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    neuron: NeuronProcess = start_neuron(name="n", model_roots=[model_root])
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-constrained-demo"),
        neurons={"n": neuron},
        models=[{"id": "demo", "source": "tiny", "context_length": 4096}],
    )
    yield openai.OpenAI(base_url=gw.url + "/v1", api_key="unused")
    gw.stop()


def test_json_schema_and_json_object_answers_parse(client: openai.OpenAI) -> None:
    for seed in range(3):
        reply = client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": f"a record {seed}"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "record", "schema": SCHEMA, "strict": True},
            },
            max_tokens=120,
            seed=seed,
        )
        jsonschema.validate(json.loads(reply.choices[0].message.content or ""), SCHEMA)
        anything = client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "any object"}],
            response_format={"type": "json_object"},
            max_tokens=400,
            seed=seed,
        )
        if anything.choices[0].finish_reason == "stop":  # an object can be longer than the cap
            assert isinstance(json.loads(anything.choices[0].message.content or ""), dict)


def test_responses_text_format_is_a_json_answer(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="demo",
        input="a record",
        text={"format": {"type": "json_schema", "name": "record", "schema": SCHEMA}},
        max_output_tokens=120,
    )
    jsonschema.validate(json.loads(response.output_text), SCHEMA)


def test_logprobs_stream_and_not_agree_with_each_other(client: openai.OpenAI) -> None:
    asked: Any = {
        "model": "demo",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
        "extra_body": {"ignore_eos": True},
    }
    whole = client.chat.completions.create(**asked)
    content = whole.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 8
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy: the top
    streamed = [
        entry
        for chunk in client.chat.completions.create(stream=True, **asked)
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content or ()
    ]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [
        (e.token, round(e.logprob, 4)) for e in content
    ]


def test_penalties_and_logit_bias_are_honoured(client: openai.OpenAI) -> None:
    base: Any = {
        "model": "demo",
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 12,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    plain = client.chat.completions.create(**base)
    penalised = client.chat.completions.create(frequency_penalty=2.0, presence_penalty=2.0, **base)
    assert plain.choices[0].message.content != penalised.choices[0].message.content
    biased = client.chat.completions.create(logit_bias={"300": 100}, logprobs=True, **base)
    tokens = {e.token for e in biased.choices[0].logprobs.content or ()}  # type: ignore[union-attr]
    assert len(tokens) == 1
