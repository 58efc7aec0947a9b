"""Gemini's API end to end with Google's ``google-genai`` SDK (skipped where not installed).

A real gateway in front of a real neuron process whose harness is the scripted ``fake`` test
double (the last user message ``say:TEXT`` makes the model emit TEXT, through the real hermes
parser, neuron, gateway and the Gemini translator). The fake's prompt is one token per
character of ``role: content`` lines, so token counts show exactly what was sent.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess

genai = pytest.importorskip("google.genai")
types = pytest.importorskip("google.genai.types")
errors = pytest.importorskip("google.genai.errors")

pytestmark = pytest.mark.slow

KEY = "gemini-key"
CALL = (
    "say:Checking.\\n"
    '<tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n</tool_call>'
)
CODER = {
    "id": "coder",
    "source": "tiny",
    "harness": "fake",
    "context_length": 1000,
    "tool_parser": "hermes",
    "aliases": ["gemini-*"],
}


@pytest.fixture(scope="module")
def neuron(start_neuron: Any, model_root: Path) -> NeuronProcess:
    started: NeuronProcess = start_neuron(
        name="gemini", model_roots=[model_root], module="tests.e2e.scripted_neuron"
    )
    return started


@pytest.fixture(scope="module")
def gateway(
    neuron: NeuronProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-gemini"),
        neurons={"gemini": neuron},
        models=[CODER],
        api_keys=[KEY],
    )
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> Any:
    options = types.HttpOptions(base_url=gateway.url, api_version="v1beta")
    return genai.Client(api_key=KEY, http_options=options)


WEATHER = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="get_weather",
            description="Weather for a city",
            parameters=types.Schema(
                type="OBJECT", properties={"city": types.Schema(type="STRING")}, required=["city"]
            ),
        )
    ]
)


def test_generate_content_returns_text_and_usage(client: Any) -> None:
    config = types.GenerateContentConfig(system_instruction="be brief", temperature=0)
    reply = client.models.generate_content(
        model="gemini-2.5-pro", contents="say:Hello there.", config=config
    )
    assert reply.text == "Hello there."
    assert reply.candidates[0].finish_reason == types.FinishReason.STOP
    usage = reply.usage_metadata
    assert usage.prompt_token_count == len("system: be brief\nuser: say:Hello there.\n")
    assert (
        usage.candidates_token_count == 6
        and usage.total_token_count == usage.prompt_token_count + 6
    )


def test_stream_generate_content_sse(client: Any) -> None:
    parts = list(
        client.models.generate_content_stream(
            model="gemini-2.5-flash", contents="say:One two three."
        )
    )
    assert "".join(p.text or "" for p in parts) == "One two three."
    assert parts[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert parts[-1].usage_metadata.candidates_token_count == 7


def test_function_call_round_trip(client: Any) -> None:
    config = types.GenerateContentConfig(
        tools=[WEATHER],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        tool_config=types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(mode="AUTO")
        ),
    )
    reply = client.models.generate_content(model="coder", contents=CALL, config=config)
    (call,) = reply.function_calls
    assert call.name == "get_weather" and call.args == {"city": "Paris"}
    contents = [
        types.Content(role="user", parts=[types.Part(text=CALL)]),
        reply.candidates[0].content,
        types.Content(
            role="user",
            parts=[
                types.Part.from_function_response(name="get_weather", response={"sky": "sunny"}),
                types.Part(text="say:Sunny."),
            ],
        ),
    ]
    again = client.models.generate_content(model="coder", contents=contents, config=config)
    assert again.text == "Sunny." and not again.function_calls


def test_stream_holds_function_calls_whole(client: Any) -> None:
    config = types.GenerateContentConfig(tools=[WEATHER])
    parts = list(client.models.generate_content_stream(model="coder", contents=CALL, config=config))
    calls = [c for p in parts for c in (p.function_calls or [])]
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "Paris"})]


def test_count_tokens(client: Any) -> None:
    counted = client.models.count_tokens(model="coder", contents="say:hi")
    assert counted.total_tokens == len("user: say:hi\n")


def test_json_array_stream_and_errors(gateway: GatewayProcess) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "say:Ab."}]}]}
    status, raw = _post(gateway, "/v1beta/models/coder:streamGenerateContent?key=" + KEY, body)
    assert status == 200
    items = json.loads(raw)
    assert (
        "".join(p["text"] for i in items for p in i["candidates"][0]["content"]["parts"]) == "Ab."
    )
    status, raw = _post(gateway, "/v1beta/models/coder:generateContent", body, key=None)
    assert status == 401 and json.loads(raw)["error"]["status"] == "UNAUTHENTICATED"
    bad = {**body, "generationConfig": {"temprature": 1}}
    status, raw = _post(gateway, "/v1beta/models/coder:generateContent?key=" + KEY, bad)
    error = json.loads(raw)["error"]
    assert (
        status == 400 and error["status"] == "INVALID_ARGUMENT" and "temprature" in error["message"]
    )
    status, raw = _post(gateway, "/v1beta/models/nope:generateContent?key=" + KEY, body)
    assert status == 404 and json.loads(raw)["error"]["code"] == 404


def test_sdk_raises_client_error(client: Any) -> None:
    with pytest.raises(errors.ClientError) as err:
        client.models.generate_content(model="nope", contents="hi")
    assert err.value.code == 404


def test_models_list(gateway: GatewayProcess) -> None:
    request = urllib.request.Request(
        gateway.url + "/v1beta/models", headers={"x-goog-api-key": KEY}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        models = json.loads(resp.read())["models"]
    assert [m["name"] for m in models] == ["models/coder"]
    assert models[0]["inputTokenLimit"] == 1000


def _post(
    gateway: GatewayProcess, path: str, body: Any, key: str | None = KEY
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        gateway.url + path, data=json.dumps(body).encode(), method="POST"
    )
    request.add_header("Content-Type", "application/json")
    if key is None:
        request.remove_header("x-goog-api-key")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
