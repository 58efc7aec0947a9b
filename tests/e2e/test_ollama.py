"""Ollama's API end to end with the official ``ollama`` Python client.

A real gateway in front of a real neuron process whose harness is the scripted ``fake`` test
double (the last user message ``say:TEXT`` makes the model emit TEXT, through the real hermes
parser, neuron, gateway and the Ollama translator). The fake's prompt is one token per
character of ``role: content`` lines, so ``prompt_eval_count`` shows exactly what the
translator sent. The tiny demo model (real transformers) answers the ``tiny`` checks.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess

ollama = pytest.importorskip("ollama")

pytestmark = pytest.mark.slow

KEY = "ollama-key"
CALL = (
    "say:Checking.\\n"
    '<tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n</tool_call>'
)
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CODER = {
    "id": "coder",
    "source": "tiny",
    "harness": "fake",
    "context_length": 1000,
    "tool_parser": "hermes",
}
TINY = {"id": "tiny", "source": "tiny", "context_length": 2048, "vram_gb": 0.1}


@pytest.fixture(scope="module")
def neuron(start_neuron: Any, model_root: Path) -> NeuronProcess:
    started: NeuronProcess = start_neuron(
        name="ollama", model_roots=[model_root], module="tests.e2e.scripted_neuron"
    )
    return started


@pytest.fixture(scope="module")
def gateway(
    neuron: NeuronProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-ollama"),
        neurons={"ollama": neuron},
        models=[CODER, TINY],
        api_keys=[KEY],
    )
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> Any:
    return ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {KEY}"})


def _raw(
    gateway: GatewayProcess, method: str, path: str, body: Any = None, key: str | None = KEY
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(gateway.url + path, data=data, method=method)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_chat_returns_text_and_counts(client: Any) -> None:
    reply = client.chat(
        model="coder:latest",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "say:Hello there."},
        ],
        stream=False,
    )
    assert reply.message.role == "assistant" and reply.message.content == "Hello there."
    assert reply.done and reply.done_reason == "stop" and reply.model == "coder:latest"
    assert reply.prompt_eval_count == len("system: be brief\nuser: say:Hello there.\n")
    assert reply.eval_count == 6  # two characters a token
    assert reply.total_duration > 0 and reply.eval_duration > 0


def test_chat_stream_is_ndjson_ending_in_done(client: Any) -> None:
    parts = list(
        client.chat(
            model="coder", messages=[{"role": "user", "content": "say:One two three."}], stream=True
        )
    )
    assert "".join(p.message.content or "" for p in parts) == "One two three."
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].done_reason == "stop" and parts[-1].eval_count == 7


def test_chat_tool_call_round_trip(client: Any) -> None:
    messages: list[Any] = [{"role": "user", "content": CALL}]
    reply = client.chat(model="coder", messages=messages, tools=TOOLS, stream=False)
    assert reply.message.content == "Checking."
    (call,) = reply.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    messages += [reply.message, {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    messages.append({"role": "user", "content": "say:It is sunny."})
    again = client.chat(model="coder", messages=messages, tools=TOOLS, stream=False)
    assert again.message.content == "It is sunny." and not again.message.tool_calls


def test_chat_stream_sends_each_tool_call_whole(client: Any) -> None:
    parts = list(
        client.chat(
            model="coder", messages=[{"role": "user", "content": CALL}], tools=TOOLS, stream=True
        )
    )
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert parts[-1].done


def test_format_on_a_harness_that_cannot_constrain_is_an_ollama_400(client: Any) -> None:
    # (answers that parse under format: tests/e2e/test_dialects_demo.py, on a real model)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    for fmt in ("json", schema):
        with pytest.raises(ollama.ResponseError) as refused:
            client.chat(
                model="coder",
                messages=[{"role": "user", "content": 'say:{"a": 1}'}],
                format=fmt,
                stream=False,
            )
        assert refused.value.status_code == 400 and "constrain" in refused.value.error


def test_generate_with_system_and_options(client: Any) -> None:
    reply = client.generate(
        model="coder",
        prompt="say:Done.",
        system="terse",
        options={"temperature": 0, "num_predict": 50, "seed": 3},
    )
    assert reply.response == "Done." and reply.done_reason == "stop"
    assert reply.prompt_eval_count == len("system: terse\nuser: say:Done.\n")
    parts = list(client.generate(model="coder", prompt="say:Streamed.", stream=True))
    assert "".join(p.response for p in parts) == "Streamed." and parts[-1].done


def test_num_predict_caps_the_answer(client: Any) -> None:
    reply = client.generate(model="coder", prompt="say:" + "x" * 40, options={"num_predict": 3})
    assert reply.done_reason == "length" and reply.eval_count == 3


def test_model_routes(client: Any, gateway: GatewayProcess) -> None:
    names = [m.model for m in client.list().models]
    assert names == ["coder", "tiny"]
    client.chat(model="coder", messages=[{"role": "user", "content": "say:hi"}])
    running = {m.model: m for m in client.ps().models}
    assert "coder" in running and running["coder"].context_length == 1000
    shown = client.show("coder")
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo["cortex.context_length"] == 1000
    assert "num_ctx 1000" in shown.parameters
    assert _raw(gateway, "GET", "/api/version")[1]["version"]


def test_keep_alive_zero_unloads_and_load_loads(client: Any, gateway: GatewayProcess) -> None:
    reply = client.generate(model="tiny", prompt="hello", options={"num_predict": 2})
    assert reply.done
    assert gateway.wait_for(lambda p: p.get("tiny") == ["ollama"])
    unloaded = client.generate(model="tiny", keep_alive=0)
    assert unloaded.done_reason == "unload"
    gateway.wait_for(lambda p: not p.get("tiny"))
    assert "tiny" not in {m.model for m in client.ps().models}
    loaded = client.chat(model="tiny", messages=[], keep_alive="10m")
    assert loaded.done_reason == "load"
    gateway.wait_for(lambda p: p.get("tiny") == ["ollama"])
    (tiny,) = [m for m in client.ps().models if m.model == "tiny"]
    left = tiny.expires_at.timestamp() - time.time()
    assert 500 < left <= 600  # the 10 minutes keep_alive asked for


def test_keep_alive_zero_on_a_generation_unloads_once_idle(
    client: Any, gateway: GatewayProcess
) -> None:
    client.generate(model="tiny", prompt="hello", options={"num_predict": 2}, keep_alive=0)
    gateway.wait_for(lambda p: not p.get("tiny"))


def test_errors_are_ollama_shaped(client: Any, gateway: GatewayProcess) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404 and "nope" in missing.value.error
    with pytest.raises(ollama.ResponseError) as option:
        client.generate(model="coder", prompt="hi", options={"mirostat": 2})
    assert option.value.status_code == 400 and "mirostat" in option.value.error
    with pytest.raises(ollama.ResponseError) as pull:
        client.pull("llama3")
    assert pull.value.status_code == 403 and "models.toml" in pull.value.error
    status, body = _raw(gateway, "GET", "/api/tags", key=None)
    assert status == 401 and set(body) == {"error"}
    status, body = _raw(gateway, "POST", "/api/embed", {"model": "coder", "input": "x"})
    assert status == 400 and 'task = "generate"' in body["error"]
    status, body = _raw(
        gateway,
        "POST",
        "/api/chat",
        {
            "model": "coder",
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_ctx": 4096},
        },
    )
    assert status == 400 and "num_ctx" in body["error"]


def test_unmatched_route_is_logged(gateway: GatewayProcess) -> None:
    status, _ = _raw(gateway, "GET", "/api/nothing-here")
    assert status == 404
    deadline = time.monotonic() + 5
    while "no route: GET /api/nothing-here -> 404" not in gateway.log_text():
        assert time.monotonic() < deadline, gateway.log_text()[-2000:]
        time.sleep(0.05)
