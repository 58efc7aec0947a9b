"""POST /v1/responses end to end with the official ``openai`` SDK.

A real gateway in front of a real neuron process whose harness is the scripted ``fake`` test
double (a random model never emits a tool call): the last user message ``say:TEXT`` makes the
model emit TEXT, which then goes through the real hermes parser, neuron, gateway and the
Responses translator. The fake's prompt is one token per character of ``role: content`` lines,
so ``usage.input_tokens`` shows exactly what the translator sent the neuron.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess
from tests.prometheus_samples import samples, total, value

pytestmark = pytest.mark.slow

KEY = "responses-key"
CALLS = (
    "say:Let me check.\\n"
    '<tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n</tool_call>\\n'
    '<tool_call>\\n{"name": "get_time", "arguments": {"tz": "CET"}}\\n</tool_call>'
)
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
        "strict": False,
    },
    {
        "type": "function",
        "name": "get_time",
        "description": "Time in a zone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
        "strict": False,
    },
    {"type": "web_search"},  # not run by cortex: dropped, never advertised to the model
]


@pytest.fixture(scope="module")
def neuron(start_neuron: Any, model_root: Path) -> NeuronProcess:
    started: NeuronProcess = start_neuron(
        name="responses", model_roots=[model_root], module="tests.e2e.scripted_neuron"
    )
    return started


@pytest.fixture(scope="module")
def gateway(
    neuron: NeuronProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    model = {
        "id": "coder",
        "source": "tiny",
        "harness": "fake",
        "context_length": 1000,
        "aliases": ["gpt-*"],
        "tool_parser": "hermes",
    }
    long = {"id": "long", "source": "tiny", "harness": "fake", "context_length": 5000}
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-responses"),
        neurons={"responses": neuron},
        models=[model, long],
        api_keys=[KEY],
    )
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)


def test_create_returns_text_and_usage(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="gpt-5.1-codex", instructions="be brief", input="say:Hello there.", store=False
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.model == "gpt-5.1-codex"
    assert response.output_text == "Hello there."
    assert [item.type for item in response.output] == ["message"]
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens == len("system: be brief\nuser: say:Hello there.\n")
    assert usage.output_tokens == 6  # two characters a token
    assert usage.input_tokens_details.cached_tokens == 0  # the fake has no prefix cache
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_create_with_tools_returns_function_calls(client: openai.OpenAI) -> None:
    response = client.responses.create(model="coder", input=CALLS, tools=TOOLS)
    assert [item.type for item in response.output] == ["message", "function_call", "function_call"]
    assert response.output_text == "Let me check."
    first, second = response.output[1], response.output[2]
    assert first.type == "function_call" and second.type == "function_call"
    assert (first.name, json.loads(first.arguments)) == ("get_weather", {"city": "Paris"})
    assert (second.name, json.loads(second.arguments)) == ("get_time", {"tz": "CET"})
    assert first.call_id != second.call_id and first.status == "completed"
    assert [t.type for t in response.tools] == ["function", "function"]
    assert response.usage is not None
    # Only the two function tools reached the model (the fake appends their names).
    prompt = f"user: {CALLS}\n" + "get_weatherget_time"
    assert response.usage.input_tokens == len(prompt)


def test_stream_sends_the_event_sequence_the_sdk_expects(client: openai.OpenAI) -> None:
    with client.responses.stream(model="coder", input=CALLS, tools=TOOLS) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    deltas = kinds.count("response.output_text.delta")
    args = [kinds.count("response.function_call_arguments.delta")]
    assert deltas >= 2 and args[0] >= 2
    call = [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    collapsed = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
    assert collapsed == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        *call,
        *call,
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.status == "completed" and final.output_text == "Let me check."
    calls = [item for item in final.output if item.type == "function_call"]
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Paris"}, {"tz": "CET"}]
    assert final.usage is not None and final.usage.output_tokens > 0


def test_second_turn_carries_function_call_output(client: openai.OpenAI) -> None:
    first = client.responses.create(model="coder", input=CALLS, tools=TOOLS)
    call = first.output[1]
    assert call.type == "function_call"
    history: list[Any] = [
        {"role": "user", "content": CALLS},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        *[item.model_dump(exclude_none=True) for item in first.output[:2]],
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"},
        {"role": "user", "content": "say:It is sunny in Paris."},
    ]
    with client.responses.stream(model="coder", input=history, tools=TOOLS) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == "It is sunny in Paris." == final.output_text
    assert [item.type for item in final.output] == ["message"]
    # The reasoning item was dropped; the call joined the assistant turn; its output is a tool
    # message (the fake renders an assistant turn with tool calls as its text content).
    prompt = (
        f"user: {CALLS}\nassistant: Let me check.\ntool: sunny, 21C\n"
        "user: say:It is sunny in Paris.\n" + "get_weatherget_time"
    )
    assert final.usage is not None and final.usage.input_tokens == len(prompt)


def test_max_output_tokens_is_a_ceiling(client: openai.OpenAI) -> None:
    response = client.responses.create(model="coder", input="say:abcdefghijkl", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "abcdef"
    with client.responses.stream(
        model="coder", input="say:abcdefghijkl", max_output_tokens=3
    ) as stream:
        kinds = [e.type for e in stream]
    assert kinds[-1] == "response.incomplete"


def test_without_max_output_tokens_the_answer_may_fill_the_context(client: openai.OpenAI) -> None:
    # The fake streams until stopped; Codex sends no limit, so none but the context applies
    # (not the neuron's 4096-token default for chat requests without max_tokens).
    response = client.responses.create(model="long", input="go on")
    assert response.status == "incomplete" and response.usage is not None
    assert response.usage.input_tokens + response.usage.output_tokens == 5000
    assert response.usage.output_tokens > 4096


def test_failure_mid_stream_ends_in_response_failed(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    events = list(client.responses.create(model="coder", input="boom", stream=True))
    assert events[0].type == "response.created"
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed" and failed.response.error is not None
    # The neuron's own words and kind ("generation failed", a server error), relayed.
    assert failed.response.error.code == "server_error"
    assert "generation failed" in failed.response.error.message
    assert "suspect: generation failed" not in gateway.log_text()  # the node answered
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_errors_before_the_stream_are_openai_envelopes(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="nope", input="x")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as stored:
        client.responses.create(model="coder", input="x", store=True)
    assert stored.value.param == "store" and "stores no responses" in stored.value.message
    with pytest.raises(openai.BadRequestError) as chained:
        client.responses.create(model="coder", input="x", previous_response_id="resp_1")
    assert chained.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.responses.create(model="coder", input="x" * 1200, stream=True)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as hosted:
        client.responses.create(
            model="coder", input=[{"type": "web_search_call", "id": "ws_1", "status": "done"}]
        )
    assert hosted.value.param == "input[0].type"
    wrong_key = openai.OpenAI(base_url=gateway.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.responses.create(model="coder", input="x")


def test_requests_are_logged_and_counted_as_responses(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    client.responses.create(model="coder", input="say:ok", prompt_cache_key="conversation-7")
    session = hashlib.blake2b(b"conversation-7", digest_size=8).hexdigest()
    lines = [line for line in gateway.log_text().splitlines() if f"session={session}" in line]
    assert lines and "dialect=responses" in lines[-1] and "status=200" in lines[-1]
    with urllib.request.urlopen(gateway.metrics_url + "/metrics", timeout=5) as resp:
        found = samples(resp.read())
    ok = value(
        found,
        "cortex_requests_total",
        model="coder",
        node="responses",
        route="/v1/responses",
        status="200",
    )
    assert ok >= 1


def _metric(url: str, token: str | None = None, **labels: str) -> float:
    request = urllib.request.Request(url + "/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return total(samples(resp.read()), "cortex_requests_total", **labels)


def test_client_hang_up_cancels_generation_on_the_neuron(
    gateway: GatewayProcess, neuron: NeuronProcess
) -> None:
    hung_up = _metric(neuron.url, neuron.token, status="499")
    gateway_hung_up = _metric(gateway.metrics_url, route="/v1/responses", status="499")
    body = {"model": "coder", "input": "stream until cancelled", "stream": True}

    async def hang_up() -> int:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            resp = await session.post(gateway.url + "/v1/responses", json=body)
            deltas = 0
            while deltas < 5:
                line = await resp.content.readline()
                deltas += line.startswith(b"event: response.output_text.delta")
            resp.close()
            return deltas

    assert asyncio.run(hang_up()) == 5
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        _metric(neuron.url, neuron.token, status="499") == hung_up
        or _metric(gateway.metrics_url, route="/v1/responses", status="499") == gateway_hung_up
    ):
        time.sleep(0.05)
    assert _metric(neuron.url, neuron.token, status="499") == hung_up + 1
    assert _metric(gateway.metrics_url, route="/v1/responses", status="499") == gateway_hung_up + 1
