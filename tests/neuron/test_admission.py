"""Admission on a busy neuron, in process with the scripted FakeHarness (a test double: a
deterministic slow model): the queue bound answers 429, and a queued stream is visibly alive."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest
from aiohttp.test_utils import TestClient

from cortex.config import ModelsConfig, NeuronConfig, NeuronSection
from cortex.neuron.app import make_app
from tests.neuron.fakes import FakeHarness

AUTH = {"Authorization": "Bearer t"}
Client = TestClient[Any, Any]


@pytest.fixture
def harness() -> FakeHarness:
    fake = FakeHarness()
    fake.step_s = 0.01
    return fake


@pytest.fixture
async def client(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, harness: FakeHarness
) -> Client:
    """One place, one queued request at most, a heartbeat every 20 ms; the model loaded."""

    def no_nvml() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_nvml)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"")
    section = NeuronSection(
        token="t",
        model_roots=(str(tmp_path),),
        cpu_memory_budget_gb=1.0,
        max_concurrency=1,
        queue_depth=1,
        heartbeat_s=0.02,
    )
    app = make_app(NeuronConfig(neuron=section), ModelsConfig(), {"fake": harness})
    client: Client = await aiohttp_client(app, headers=AUTH)
    resp = await client.post("/models/load", json={"model": "m", "source": "m", "harness": "fake"})
    assert resp.status == 200
    return client


def _chat(tokens: int, stream: bool) -> dict[str, Any]:
    messages = [{"role": "user", "content": "go"}]
    return {"model": "m", "messages": messages, "max_tokens": tokens, "stream": stream}


async def _queued(client: Client) -> int:
    return int((await (await client.get("/status")).json())["models"][0]["queued"])


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def _held(
    harness: FakeHarness, client: Client, tokens: int
) -> tuple[asyncio.Task[Any], asyncio.Event]:
    """A non-streamed request running in the one place, which it holds until the returned
    event is set (the model's ``hold``)."""
    [model] = harness.models
    model.hold = hold = asyncio.Event()
    running = asyncio.create_task(client.post("/v1/chat/completions", json=_chat(tokens, False)))
    await _until(lambda: model.running == 1)
    return running, hold


async def test_past_queue_depth_a_request_gets_429_with_retry_after(
    client: Client, harness: FakeHarness
) -> None:
    running, hold = await _held(harness, client, 4)
    waiting = asyncio.create_task(client.post("/v1/chat/completions", json=_chat(2, False)))
    async with asyncio.timeout(5):
        while await _queued(client) != 1:
            await asyncio.sleep(0.01)
    refused = await client.post("/v1/chat/completions", json=_chat(2, True))
    assert refused.status == 429 and refused.headers["Retry-After"] == "1"
    body = await refused.json()
    assert body["error"]["type"] == "rate_limit_error" and "queue_depth" in body["error"]["message"]
    hold.set()
    assert (await running).status == 200 and (await waiting).status == 200


async def test_a_queued_stream_gets_headers_and_heartbeats_before_admission(
    client: Client, harness: FakeHarness
) -> None:
    running, hold = await _held(harness, client, 3)
    resp = await client.post("/v1/chat/completions", json=_chat(3, True))
    assert resp.status == 200  # headers came while the first request still holds the place
    early = b""
    while b": queued" not in early:
        early += await resp.content.readany()
    assert not running.done()
    assert b'"role":"assistant"' in early and b"[DONE]" not in early
    hold.set()
    rest = early + await resp.content.read()
    assert rest.endswith(b"data: [DONE]\n\n") and rest.count(b'"content":"ab"') == 3
    assert (await running).status == 200


async def test_a_burst_is_bounded_before_anyone_is_admitted(
    client: Client, harness: FakeHarness
) -> None:
    """Requests still tokenizing count too: five at once are one running, one queued, 3 x 429."""
    [model] = harness.models
    model.hold = hold = asyncio.Event()  # nobody finishes before all five were answered or placed
    answers = [
        asyncio.create_task(client.post("/v1/chat/completions", json=_chat(5, False)))
        for _ in range(5)
    ]
    await _until(lambda: sum(a.done() for a in answers) == 3)
    assert [a.result().status for a in answers if a.done()] == [429, 429, 429]
    hold.set()
    assert sorted([(await a).status for a in answers]) == [200, 200, 429, 429, 429]


async def test_a_slow_first_token_is_bridged_by_heartbeats(
    client: Client, harness: FakeHarness
) -> None:
    """Admitted at once (nothing else runs), but the model is slow to its first token, as a
    long prefill would be: heartbeats keep the stream visibly alive until the text comes."""
    [model] = harness.models
    model.hold = hold = asyncio.Event()
    resp = await client.post("/v1/chat/completions", json=_chat(1, True))
    head = b""
    while head.count(b": queued") < 3:
        head += await resp.content.readany()
    assert b'"content":"ab"' not in head
    hold.set()  # the first token comes now
    body = head + await resp.content.read()
    assert body.index(b": queued") < body.index(b'"content":"ab"')
    assert body.endswith(b"data: [DONE]\n\n")


async def test_a_hang_up_before_the_first_token_cancels_the_generation(
    client: Client, harness: FakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    [model] = harness.models
    model.hold = asyncio.Event()  # never set: the model is still "prefilling" when the client goes
    resp = await client.post("/v1/chat/completions", json=_chat(3, True))
    early = b""
    while b": queued" not in early:
        early += await resp.content.readany()
    resp.close()
    await _until(lambda: model.cancelled == 1)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
