"""The neuron app in process, over HTTP, with the scripted FakeHarness (no torch)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pynvml
import pytest
from aiohttp.test_utils import TestClient

from cortex.config import ModelEntry, ModelsConfig, NeuronConfig, NeuronSection
from cortex.neuron.app import make_app, serve
from tests.neuron.fakes import FakeHarness, FakeModel
from tests.prometheus_samples import samples, value

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture(autouse=True)
def no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake harness runs on the cpu device, which a neuron offers only without GPUs."""

    def missing() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", missing)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "model.safetensors").write_bytes(b"")
    return tmp_path


@pytest.fixture
def harness() -> FakeHarness:
    return FakeHarness()


@pytest.fixture
def start(aiohttp_client: Any, root: Path, harness: FakeHarness) -> MakeClient:
    async def start(preload: tuple[str, ...] = (), **neuron: Any) -> Client:
        section = NeuronSection(
            token=TOKEN, model_roots=(str(root),), cpu_memory_budget_gb=1.0, **neuron
        )
        models = ModelsConfig(models=(ModelEntry(id="pre", source="tiny", harness="fake"),))
        app = make_app(NeuronConfig(neuron=section, preload=preload), models, {"fake": harness})
        client: Client = await aiohttp_client(app, headers=AUTH)
        return client

    return start


@pytest.fixture
async def client(start: MakeClient) -> Client:
    return await start()


async def load(client: Client, **spec: Any) -> tuple[int, Any]:
    body = {"model": "tiny", "source": "tiny", "harness": "fake", **spec}
    resp = await client.post("/models/load", json=body)
    return resp.status, await resp.json()


async def chat(client: Client, text: str, **extra: Any) -> tuple[int, Any]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": text}], **extra}
    resp = await client.post("/v1/chat/completions", json=body)
    return resp.status, await resp.json()


async def stream(client: Client, text: str, **extra: Any) -> list[Any]:
    """The decoded SSE events of a streamed chat; "[DONE]" kept as a string."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": text}], "stream": True}
    resp = await client.post("/v1/chat/completions", json=body | extra)
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    raw = (await resp.read()).decode()
    events = [block.removeprefix("data: ") for block in raw.split("\n\n") if block]
    return [e if e == "[DONE]" else msgspec.json.decode(e) for e in events]


async def status(client: Client) -> Any:
    return await (await client.get("/status")).json()


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.01)


def model_of(harness: FakeHarness) -> FakeModel:
    return harness.models[-1]


# --------------------------------------------------------------------------- routes and auth


async def test_health_needs_no_token_and_everything_else_does(client: Client) -> None:
    assert (await client.get("/health", headers={"Authorization": ""})).status == 200
    resp = await client.get("/status", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_api_key"


async def test_unknown_route_gets_a_json_envelope(client: Client) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_a_refused_token_is_logged_without_it(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cortex.neuron")
    await client.get("/status", headers={"Authorization": "Bearer not-the-token"})
    assert "401 GET /status" in caplog.text and "not-the-token" not in caplog.text


async def test_get_on_a_post_route_is_405_naming_the_method(client: Client) -> None:
    resp = await client.get("/v1/chat/completions")
    assert resp.status == 405 and resp.headers["allow"] == "POST"
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_status_reports_the_cpu_device_and_harnesses(client: Client) -> None:
    body = await status(client)
    assert body["harnesses"] == ["fake"]
    assert [(d["id"], d["total_bytes"]) for d in body["devices"]] == [("cpu", 1_000_000_000)]


# --------------------------------------------------------------------------- lifecycle


async def test_load_is_idempotent(client: Client, harness: FakeHarness) -> None:
    assert (await load(client))[1]["already_loaded"] is False
    code, body = await load(client)
    assert code == 200 and body["already_loaded"] is True and body["model"]["state"] == "loaded"
    assert harness.loads == 1
    (cpu,) = (await status(client))["devices"]
    assert cpu["free_bytes"] == 1_000_000_000 - 10_000_000


async def test_concurrent_loads_of_one_model_load_once(
    client: Client, harness: FakeHarness
) -> None:
    harness.gate = threading.Event()
    loads = [asyncio.create_task(load(client)) for _ in range(3)]

    async def loading() -> bool:
        models = (await status(client))["models"]
        return bool(models) and models[0]["progress"] == {"fraction": 0.5, "stage": "weights"}

    await until(loading)
    assert (await status(client))["models"][0]["state"] == "loading"
    harness.gate.set()
    results = await asyncio.gather(*loads)
    assert [code for code, _ in results] == [200, 200, 200]
    assert harness.loads == 1


async def test_conflicting_spec_is_409(client: Client) -> None:
    await load(client)
    code, body = await load(client, quantization="4bit")
    assert code == 409 and body["error"]["code"] == "conflict"


async def test_compiled_decode_on_a_harness_without_it_is_400_naming_it(client: Client) -> None:
    code, body = await load(client, compiled_decode=True)
    assert code == 400 and body["error"]["param"] == "compiled_decode"
    assert "no compiled decode" in body["error"]["message"]


async def test_model_that_does_not_fit_is_507(client: Client) -> None:
    code, body = await load(client, vram_gb=2.0)
    assert code == 507 and body["error"]["code"] == "insufficient_memory"


@pytest.mark.parametrize("source", ["missing", "../etc", "/etc", "hf:org/name"])
async def test_bad_or_forbidden_source_is_400(client: Client, source: str) -> None:
    code, body = await load(client, source=source)
    assert code == 400 and body["error"]["param"] == "source"


async def test_unknown_harness_is_503(client: Client) -> None:
    code, body = await load(client, harness="vllm")
    assert code == 503 and body["error"]["code"] == "no_harness"


async def test_failed_load_is_visible_and_can_be_retried(
    client: Client, harness: FakeHarness
) -> None:
    harness.fail_with = RuntimeError("weights corrupt")
    code, body = await load(client)
    assert code == 503 and "weights corrupt" in body["error"]["message"]
    (entry,) = (await status(client))["models"]
    assert entry["state"] == "failed" and "weights corrupt" in entry["error"]
    harness.fail_with = None
    assert (await load(client))[0] == 200


async def test_unload_frees_and_then_404(client: Client, harness: FakeHarness) -> None:
    await load(client)
    resp = await client.post("/models/unload", json={"model": "tiny"})
    assert resp.status == 200 and (await resp.json())["freed_bytes"] == 10_000_000
    assert model_of(harness).unloaded
    assert (await client.post("/models/unload", json={"model": "tiny"})).status == 404
    assert (await chat(client, "hi"))[0] == 404


async def _draining(
    client: Client, harness: FakeHarness, text: str
) -> tuple[asyncio.Event, asyncio.Task[tuple[int, Any]], asyncio.Task[Any]]:
    """A request held in flight and an unload draining it: (the request's release, the
    request, the unload), once /status shows the model unloading."""
    harness.step_s = 0.02
    await load(client)
    model_of(harness).hold = hold = asyncio.Event()  # the request runs until we let it finish
    request = asyncio.create_task(chat(client, text))
    await until(lambda: _in_flight(client, 1))
    unload = asyncio.create_task(
        client.post("/models/unload", json={"model": "tiny", "drain_s": 5})
    )

    async def unloading() -> bool:
        return [m["state"] for m in (await status(client))["models"]] == ["unloading"]

    await until(unloading)
    return hold, request, unload


async def test_unload_waits_for_in_flight_requests_to_finish(
    client: Client, harness: FakeHarness
) -> None:
    hold, request, unload = await _draining(client, harness, "say:0123456789")
    assert not unload.done()  # it is draining
    hold.set()
    resp = await unload
    assert (await resp.json())["cancelled"] == 0
    code, body = await request
    assert code == 200 and body["choices"][0]["message"]["content"] == "0123456789"


async def test_a_load_during_an_unload_waits_for_it_and_loads_afresh(
    client: Client, harness: FakeHarness
) -> None:
    """Ollama's keep_alive 0 then a request at once: the load must not fail mid-unload."""
    hold, request, unload = await _draining(client, harness, "say:ok")
    draining = model_of(harness)
    reload = asyncio.create_task(load(client))
    done, _ = await asyncio.wait({reload}, timeout=0.3)
    assert not done  # without waiting, it was refused at once with 409
    hold.set()
    code, body = await reload
    assert code == 200 and body["model"]["state"] == "loaded" and not body["already_loaded"]
    assert draining.unloaded and model_of(harness) is not draining
    assert (await unload).status == 200 and (await request)[0] == 200


async def test_unload_cancels_what_outlives_the_drain_deadline(
    client: Client, harness: FakeHarness
) -> None:
    harness.step_s = 0.01
    await load(client)
    plain = asyncio.create_task(chat(client, "forever", max_tokens=200))
    streamed = asyncio.create_task(stream(client, "forever", max_tokens=200))
    await until(lambda: _in_flight(client, 2))
    resp = await client.post("/models/unload", json={"model": "tiny", "drain_s": 0.05})
    assert (await resp.json())["cancelled"] == 2
    code, body = await plain
    assert code == 503 and "unloaded" in body["error"]["message"]
    events = await streamed
    assert "unloaded" in events[-2]["error"]["message"] and events[-1] == "[DONE]"
    assert model_of(harness).cancelled == 2


async def test_preload_loads_in_the_background(start: MakeClient) -> None:
    client = await start(preload=("pre",))

    async def loaded() -> bool:
        return [m["state"] for m in (await status(client))["models"]] == ["loaded"]

    await until(loaded)


async def _in_flight(client: Client, n: int) -> bool:
    return bool((await status(client))["in_flight"] == n)


# --------------------------------------------------------------------------- completions


async def test_chat_non_stream(client: Client) -> None:
    await load(client)
    code, body = await chat(client, "say:hello world")
    assert code == 200
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "hello world",
        "tool_calls": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["prompt_tokens"] == len("user: say:hello world\n")


async def test_chat_stream_role_content_finish_usage_done(client: Client) -> None:
    await load(client)
    events = await stream(client, "say:hello", stream_options={"include_usage": True})
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-3])
    assert text == "hello"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 3
    assert events[-1] == "[DONE]"


async def test_stop_string_is_cut_and_generation_closed(
    client: Client, harness: FakeHarness
) -> None:
    await load(client)
    _, body = await chat(client, "say:hello STOP there", stop="STOP")
    assert body["choices"][0]["message"]["content"] == "hello "
    assert body["choices"][0]["finish_reason"] == "stop"
    assert model_of(harness).cancelled == 1
    events = await stream(client, "say:ab<|x|>cd", stop=["<|x|>"])
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "ab"


async def test_max_tokens_finishes_with_length(client: Client) -> None:
    await load(client)
    _, body = await chat(client, "forever", max_tokens=3)
    choice = body["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("ababab", "length")
    assert body["usage"]["completion_tokens"] == 3


async def test_max_tokens_past_the_context_is_capped_and_a_too_long_prompt_refused(
    client: Client,
) -> None:
    await load(client, context_length=64)
    _, body = await chat(client, "forever", max_tokens=128_000)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] == 64
    code, body = await chat(client, "x" * 70, max_tokens=30)
    assert code == 400 and body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["message"] == (
        "This model's maximum context length is 64 tokens. However, your messages resulted in "
        "77 tokens. Please reduce the length of the messages."
    )


async def test_unknown_model_is_404_and_bad_parameter_names_the_field(client: Client) -> None:
    code, body = await chat(client, "hi")
    assert code == 404 and body["error"]["code"] == "model_not_found"
    await load(client)
    code, body = await chat(client, "hi", n=2)
    assert code == 400 and body["error"]["param"] == "n"
    code, body = await chat(client, "hi", temperature=3)
    assert code == 400 and body["error"]["param"] == "temperature"


TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {}}}]
CALL = 'say:<tool_call>{"name": "get_time", "arguments": {"tz": "UTC"}}</tool_call>'


async def test_tool_calls_non_stream_and_stream(client: Client) -> None:
    await load(client)
    _, body = await chat(client, CALL, tools=TOOLS)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_time", "arguments": '{"tz":"UTC"}'}
    events = await stream(client, CALL, tools=TOOLS)
    (delta,) = [
        e["choices"][0]["delta"] for e in events[:-1] if "tool_calls" in e["choices"][0]["delta"]
    ]
    assert delta["tool_calls"][0]["function"]["name"] == "get_time"
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


NAMED = {"type": "function", "function": {"name": "get_time"}}


async def test_named_tool_choice_starts_the_turn_with_that_call(client: Client) -> None:
    """The fake model (a test double) only continues the forced prefix: the call the client
    gets is prefix + output, parsed as one."""
    await load(client)
    rest = 'say:{"tz": "UTC"}}</tool_call>'
    _, body = await chat(client, rest, tools=TOOLS, tool_choice=NAMED)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {
        "name": "get_time",
        "arguments": '{"tz":"UTC"}',
    }
    _, auto = await chat(client, rest, tools=TOOLS)  # the fake's tokens are characters
    prefix = '<tool_call>\n{"name": "get_time", "arguments": '
    assert body["usage"]["prompt_tokens"] == auto["usage"]["prompt_tokens"] + len(prefix)
    events = await stream(client, rest, tools=TOOLS, tool_choice=NAMED)
    calls = [
        e["choices"][0]["delta"] for e in events[:-1] if e["choices"][0]["delta"].get("tool_calls")
    ]
    assert calls[0]["tool_calls"][0]["function"]["name"] == "get_time"
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_required_tool_choice_opens_a_call_block(client: Client) -> None:
    await load(client)
    rest = 'say:{"name": "get_time", "arguments": {}}</tool_call>'
    _, body = await chat(client, rest, tools=TOOLS, tool_choice="required")
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"


async def test_forced_tool_choice_without_a_parser_is_400(client: Client) -> None:
    await load(client, tool_parser="none")
    status, body = await chat(client, "hi", tools=TOOLS, tool_choice="required")
    assert status == 400 and body["error"]["param"] == "tool_choice"
    assert 'tool_parser = "hermes"' in body["error"]["message"]


async def test_a_named_tool_missing_from_tools_is_400(client: Client) -> None:
    await load(client)
    other = {"type": "function", "function": {"name": "launch"}}
    status, body = await chat(client, "hi", tools=TOOLS, tool_choice=other)
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert "launch" in body["error"]["message"]


async def test_without_tools_markup_stays_content(client: Client) -> None:
    await load(client)
    _, body = await chat(client, CALL)
    assert body["choices"][0]["message"]["content"].startswith("<tool_call>")


async def test_hang_up_cancels_the_sequence(client: Client, harness: FakeHarness) -> None:
    harness.step_s = 0.01
    await load(client)
    for streaming in (False, True):
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "forever"}],
            "max_tokens": 200,
            "stream": streaming,
        }
        request = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        await until(lambda: _in_flight(client, 1))
        if streaming:
            resp = await request
            await resp.content.readline()
            resp.close()
        else:
            request.cancel()
        await until(lambda: _in_flight(client, 0))
    assert model_of(harness).cancelled == 2 and model_of(harness).running == 0


async def test_max_concurrency_queues_the_rest(start: MakeClient, harness: FakeHarness) -> None:
    client = await start(max_concurrency=1)
    harness.step_s = 0.01
    await load(client)
    model_of(harness).hold = hold = asyncio.Event()  # the first holds the one place meanwhile
    first = asyncio.create_task(chat(client, "forever", max_tokens=40))
    second = asyncio.create_task(chat(client, "forever", max_tokens=40))

    async def queued() -> bool:
        body = await status(client)
        return bool(body["in_flight"] == 1 and body["models"][0]["queued"] == 1)

    await until(queued)
    hold.set()
    assert [r[0] for r in await asyncio.gather(first, second)] == [200, 200]


async def test_models_list_and_tokenize(client: Client) -> None:
    await load(client)
    body = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in body["data"]] == ["tiny"]
    resp = await client.post(
        "/v1/tokenize", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert (await resp.json()) == {
        "model": "tiny",
        "count": len("user: hi\n"),
        "max_model_len": 256,
    }


async def test_unexpected_harness_error_is_a_500_envelope_or_a_stream_error_event(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    await load(client)
    code, body = await chat(client, "boom")
    assert code == 500 and body["error"]["type"] == "server_error"
    events = await stream(client, "boom")
    assert events[1]["choices"][0]["delta"] == {"content": "ab"}
    assert events[-2]["error"]["type"] == "server_error" and events[-1] == "[DONE]"
    assert "device fell over" in caplog.text
    found = samples(await (await client.get("/metrics")).read())
    assert value(found, "cortex_requests_total", model="tiny", status="500") == 2  # both ways


def test_serve_refuses_a_public_address_without_a_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = NeuronConfig(neuron=NeuronSection(listen="0.0.0.0:13131"))
    with pytest.raises(SystemExit) as exit_info:
        serve(config, Path("neuron.toml"))
    assert exit_info.value.code == 2, "a config error: systemd must not restart it"
    assert "refusing to listen on 0.0.0.0:13131 without neuron.token" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"presence_penalty": -0.5}, "presence_penalty"),
        ({"repetition_penalty": 1.2}, "repetition_penalty"),
        ({"logit_bias": {"5": 3}}, "logit_bias"),
        ({"logprobs": True}, "logprobs"),
        ({"n": 2}, "n"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "strict": True, "parameters": {}},
                    }
                ]
            },
            "tools[0].function.strict",
        ),
    ],
)
async def test_fields_the_harness_cannot_honour_are_400_naming_them(
    client: Client, extra: dict[str, Any], param: str
) -> None:
    """The fake harness declares no optional sampling features (HarnessInfo.sampling)."""
    await load(client)
    code, body = await chat(client, "say:hello", **extra)
    assert code == 400, body
    assert body["error"]["param"] == param and "tiny" in body["error"]["message"]


async def test_features_left_at_their_defaults_are_not_refused(client: Client) -> None:
    await load(client)
    code, _ = await chat(
        client, "say:hi", frequency_penalty=0, repetition_penalty=1.0, logprobs=False, n=1
    )
    assert code == 200
