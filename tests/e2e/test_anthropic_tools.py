"""The Anthropic Messages API and tool calling end to end, with the official SDKs.

A real gateway in front of a real neuron process whose harness is the scripted ``fake`` test
double (a random model never emits a tool call): the last user message ``say:TEXT`` makes the
model emit TEXT, which then goes through the real hermes parser, neuron, gateway and translator.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess
from tests.prometheus_samples import samples, total

pytestmark = pytest.mark.slow

# Qwen's hermes format, newlines written as a literal backslash-n for the fake's script.
CALLS = (
    "say:Let me check.\\n"
    '<tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n</tool_call>\\n'
    '<tool_call>\\n{"name": "get_time", "arguments": {"tz": "CET"}}\\n</tool_call>'
)
TOOLS: list[Any] = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
    {
        "name": "get_time",
        "description": "Time in a zone",
        "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
]


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Any, model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    neuron: NeuronProcess = start_neuron(
        name="tools", model_roots=[model_root], module="tests.e2e.scripted_neuron"
    )
    model = {
        "id": "coder",
        "source": "tiny",
        "harness": "fake",
        "context_length": 1000,
        "aliases": ["claude-*"],
        "tool_parser": "hermes",
    }
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-tools"), neurons={"tools": neuron}, models=[model]
    )
    yield gw
    gw.stop()


@pytest.fixture
def claude(gateway: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)


def test_create_returns_text_then_tool_use_blocks(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=300,
        tools=TOOLS,
        messages=[{"role": "user", "content": CALLS}],
    )
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == "Let me check."  # type: ignore[union-attr]
    first, second = message.content[1], message.content[2]
    assert first.type == "tool_use" and second.type == "tool_use"
    assert (first.name, first.input) == ("get_weather", {"city": "Paris"})
    assert (second.name, second.input) == ("get_time", {"tz": "CET"})
    assert first.id.startswith("toolu_") and first.id != second.id
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens > 0 and message.usage.input_tokens > 0


@pytest.mark.parametrize(
    ("choice", "script"),
    [
        ({"type": "tool", "name": "get_weather"}, 'say:{"city": "Paris"}}\\n</tool_call>'),
        (
            {"type": "any"},
            'say:{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        ),
    ],
)
def test_forced_tool_choice_is_honoured(
    claude: anthropic.Anthropic, choice: dict[str, Any], script: str
) -> None:
    """The neuron opens the call itself (the scripted double only continues it): the client
    gets a tool_use, whatever the model would have said first."""
    message = claude.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=300,
        tools=TOOLS,
        tool_choice=choice,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": script}],
    )
    (block,) = message.content
    assert block.type == "tool_use" and (block.name, block.input) == (
        "get_weather",
        {"city": "Paris"},
    )
    assert message.stop_reason == "tool_use"


def test_stream_emits_text_and_tool_use_with_consistent_indexes(
    claude: anthropic.Anthropic,
) -> None:
    with claude.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=300,
        tools=TOOLS,
        messages=[{"role": "user", "content": CALLS}],
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and "message_stop" in kinds
    starts = [e for e in events if e.type == "content_block_start"]
    assert [(e.index, e.content_block.type) for e in starts] == [
        (0, "text"),
        (1, "tool_use"),
        (2, "tool_use"),
    ]
    assert any(e.type == "input_json" for e in events), "tool input streamed as JSON deltas"
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[2].input == {"tz": "CET"}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"


def test_tool_result_turn_round_trips(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": CALLS},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 21C"},
                    {"type": "text", "text": "say:It is sunny in Paris."},
                ],
            },
        ],
    )
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "It is sunny in Paris."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"


def test_stop_sequence_is_reported(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="coder",
        max_tokens=100,
        stop_sequences=["script"],
        messages=[{"role": "user", "content": "say:Hello from the script."}],
    )
    assert message.content[0].text == "Hello from the "  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "script")


def test_count_tokens_uses_the_model_template_and_is_cached(
    claude: anthropic.Anthropic, gateway: GatewayProcess
) -> None:
    args: dict[str, Any] = {
        "model": "coder",
        "system": "be brief",
        "messages": [{"role": "user", "content": "hi"}],
    }
    count = claude.messages.count_tokens(**args).input_tokens
    # The fake template renders one token per character of "role: content\n" lines.
    assert count == len("system: be brief\nuser: hi\n")
    assert claude.messages.count_tokens(**args).input_tokens == count
    with_tools = claude.messages.count_tokens(**args, tools=TOOLS).input_tokens
    assert with_tools == count + len("get_weatherget_time")
    # An exchange like any other (issue 25): in the request log and the request metrics.
    route = "/v1/messages/count_tokens"
    assert f"route={route}" in gateway.log_text()
    with urllib.request.urlopen(gateway.metrics_url + "/metrics", timeout=10) as resp:
        found = samples(resp.read())
    assert total(found, "cortex_requests_total", route=route, status="200") >= 3


def test_errors_use_anthropic_types(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(
            model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as image:
        claude.messages.create(
            model="coder",
            max_tokens=5,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                        }
                    ],
                }
            ],
        )
    assert "does not accept images" in str(image.value)
    with pytest.raises(anthropic.BadRequestError) as too_long:
        claude.messages.create(
            model="coder", max_tokens=50, messages=[{"role": "user", "content": "x" * 1200}]
        )
    assert "prompt is too long:" in str(too_long.value) and "> 1000 maximum" in str(too_long.value)
    assert too_long.value.response.headers["request-id"].startswith("req_")


def test_openai_dialect_gets_tool_calls_streamed_and_not(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    tools: list[Any] = [
        {"type": "function", "function": {"name": t["name"], "parameters": t["input_schema"]}}
        for t in TOOLS
    ]
    messages: list[Any] = [{"role": "user", "content": CALLS}]
    done = client.chat.completions.create(model="coder", messages=messages, tools=tools)
    calls = done.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert done.choices[0].finish_reason == "tool_calls"
    chunks = list(
        client.chat.completions.create(model="coder", messages=messages, tools=tools, stream=True)
    )
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [d.index for d in deltas] == [0, 1]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_openai_images_to_a_text_model_are_refused(gateway: GatewayProcess) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    status, body = gateway.call(
        "POST",
        "/v1/chat/completions",
        {"model": "coder", "messages": [{"role": "user", "content": [image]}]},
    )
    assert status == 400
    assert body["error"]["message"] == "model coder does not accept images"
    assert body["error"]["param"] == "messages[0].content"


async def test_claude_code_style_request_round_trips(gateway: GatewayProcess) -> None:
    tools = [
        {
            "name": f"Tool{i}",
            "description": f"tool number {i}",
            "input_schema": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["path"],
                "additionalProperties": False,
            },
        }
        for i in range(12)
    ]
    body = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 64,
        "stream": True,
        "system": [
            {
                "type": "text",
                "text": "You are Claude Code.",
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": "cwd: /repo"},
        ],
        "tools": tools,
        "metadata": {"user_id": "u1"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "list", "cache_control": {"type": "ephemeral"}}
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "tool_use", "id": "toolu_9", "name": "Tool3", "input": {"path": "."}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_9",
                        "content": [{"type": "text", "text": "a.py"}],
                    },
                    {"type": "text", "text": "say:Done."},
                ],
            },
        ],
    }
    headers = {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "interleaved-thinking-2025-05-14",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + "/v1/messages", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        raw = await resp.text()
    names = [line[len("event: ") :] for line in raw.splitlines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * names.count("content_block_delta"),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    text = "".join(
        json.loads(line[6:])["delta"]["text"]
        for line in raw.splitlines()
        if line.startswith("data: ") and '"text_delta"' in line
    )
    assert text == "Done."
