"""Output you can trust on a real small model (issue 21): SmolLM2-135M-Instruct, through a real
gateway and neuron, asked for tool calls and JSON in the OpenAI, Anthropic and Responses
dialects. Without constraints this model names tools that do not exist and leaves JSON open;
with them every reply parses and validates against its schema (``jsonschema``).

The default suite sends 8 prompts per case (2 cores share them with everything else);
``bench/constrained.py`` sends the issue's 30 per dialect and reports the count that validated.

Strings carry a ``maxLength``: a 135M model can loop inside a string, and a reply cut by
``max_tokens`` cannot be valid whatever the grammar (it ends with finish "length").
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import jsonschema
import openai
import pytest

from cortex import starter
from tests.e2e.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow

MODEL = starter.MODEL_ID
LOAD_TIMEOUT_S = 300.0
PARALLEL = 8  # requests in flight: the neuron batches them
CITY = {"type": "string", "maxLength": 24}
WEATHER = {
    "type": "object",
    "properties": {
        "location": {
            "type": "object",
            "properties": {"city": CITY, "country": {"type": "string", "maxLength": 24}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["location", "unit", "days"],
    "additionalProperties": False,
}
SEARCH = {
    "type": "object",
    "properties": {
        "patterns": {"type": "array", "items": CITY, "minItems": 1, "maxItems": 3},
        "case_sensitive": {"type": "boolean"},
    },
    "required": ["patterns"],
    "additionalProperties": False,
}
EVENT = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "attendees": {"type": "integer", "minimum": 1, "maximum": 50},
        "priority": {"type": "string", "enum": ["low", "normal", "high"]},
    },
    "required": ["title", "attendees", "priority"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "search_files": SEARCH, "create_event": EVENT}
TOOLS = [
    {
        "type": "function",
        "function": {"name": name, "description": name.replace("_", " "), "parameters": schema},
    }
    for name, schema in SCHEMAS.items()
]
PROMPTS = [
    f"{ask} {thing}"
    for ask in ("Please", "Could you", "I need you to")
    for thing in (
        "check the weather in Paris for three days.",
        "find files mentioning invoices.",
        "book a meeting with 4 people about the budget.",
        "tell me if it will rain in Tokyo tomorrow.",
        "search the code for TODO and FIXME.",
        "set up an urgent call with the whole team of 12.",
        "get the forecast for Lagos in fahrenheit.",
        "look for the word config, case sensitive.",
        "schedule a low priority lunch for 2.",
        "what's the temperature in Oslo this week?",
    )
]
SAMPLE = PROMPTS[::4]  # 8 of the 30, every kind of request among them
ANSWER = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 60},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["answer", "confidence", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def gateway(smollm2_gateway: GatewayProcess) -> GatewayProcess:
    """The session's SmolLM2 gateway (tests/e2e/conftest.py), once the model is resident."""
    smollm2_gateway.wait_for(lambda placed: placed.get(MODEL) == ["smol"], timeout=LOAD_TIMEOUT_S)
    return smollm2_gateway


def _all(ask: Any, items: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(ask, items))


def test_required_tool_calls_always_validate_in_the_openai_dialect(
    gateway: GatewayProcess,
) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")

    def ask(prompt: str) -> Any:
        return client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=160,
            temperature=0.2,
        )

    replies = _all(ask, SAMPLE)
    assert len(replies) == len(SAMPLE)
    for reply in replies:
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        (call,) = choice.message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_any_tool_use_always_validates_in_the_anthropic_dialect(gateway: GatewayProcess) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    tools = [
        {
            "name": t["function"]["name"],
            "description": "tool",
            "input_schema": t["function"]["parameters"],
        }
        for t in TOOLS
    ]

    def ask(prompt: str) -> Any:
        return client.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=160,
            messages=[{"role": "user", "content": prompt}],
            tools=tools,  # type: ignore[arg-type]
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            extra_body={"temperature": 0.2},
        )

    replies = _all(ask, SAMPLE)
    for reply in replies:
        assert reply.stop_reason == "tool_use", reply
        (use,) = [block for block in reply.content if block.type == "tool_use"]
        jsonschema.validate(use.input, SCHEMAS[use.name])


def test_json_schema_answers_always_validate(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": ANSWER, "strict": True},
    }

    def ask(prompt: str) -> Any:
        return client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            response_format=fmt,  # type: ignore[arg-type]
            max_tokens=160,
            temperature=0.2,
        )

    replies = _all(ask, SAMPLE)
    for reply in replies:
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), ANSWER)


def test_auto_tool_calls_that_the_model_makes_validate(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")

    def ask(prompt: str) -> Any:
        return client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            tools=TOOLS,  # type: ignore[arg-type]
            max_tokens=96,
            temperature=0.2,
        )

    replies = _all(ask, SAMPLE[::2])  # free text runs to max_tokens: 4 prompts
    for reply in replies:
        for call in reply.choices[0].message.tool_calls or ():
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        if reply.choices[0].finish_reason != "length":  # a call cut by the cap stays text
            assert "<tool_call>" not in (reply.choices[0].message.content or "")
