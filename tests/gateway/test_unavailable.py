"""A model no live neuron can serve: 503 (529 for Anthropic) with Retry-After and the reason."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from cortex.config import CortexConfig, GatewaySection, ModelEntry, ModelsConfig, NeuronRef
from cortex.gateway.app import make_app
from tests.e2e.neuron_process import free_port
from tests.gateway.test_faults import FaultyNeuron


@pytest.fixture
async def base() -> AsyncIterator[str]:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = CortexConfig(
        gateway=GatewaySection(poll_interval_s=60.0),
        neurons=(NeuronRef(name="gpu1", endpoint=dead),),
    )
    models = ModelsConfig(
        models=(
            ModelEntry(id="m", source="m", vram_gb=8.0),
            ModelEntry(id="elsewhere", source="m", nodes=("gpu9",)),  # no such neuron
        )
    )
    server = TestServer(make_app(config, models), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/")).rstrip("/")
    await server.close()


async def test_openai_gets_503_with_retry_after_and_the_reason(base: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + "/v1/chat/completions", json=body) as resp,
    ):
        error = (await resp.json())["error"]
        assert resp.status == 503
        # The node may come back any second (down nodes are probed often): a short wait.
        assert int(resp.headers["retry-after"]) == 5
    assert error["message"] == "no live neuron may serve m (allowed: any; up: none)"
    assert error["type"] == "server_error"


async def test_anthropic_gets_529_overloaded_with_retry_after(base: str) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + "/v1/messages", json=body) as resp,
    ):
        payload = await resp.json()
        assert resp.status == 529
        assert "retry-after" in resp.headers
    assert payload["type"] == "error" and payload["error"]["type"] == "overloaded_error"


async def test_admin_status_shows_the_node_down(base: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(base + "/cortex/status") as resp:
        status = await resp.json()
    assert status["neurons"][0]["state"] == "down"
    assert status["models"][0] == {**status["models"][0], "id": "m", "state": "available"}


async def test_model_no_configured_neuron_may_serve_is_404_not_a_retry(base: str) -> None:
    body = {"model": "elsewhere", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + "/v1/chat/completions", json=body) as resp,
    ):
        error = (await resp.json())["error"]
        assert resp.status == 404
        assert "retry-after" not in resp.headers
    assert "no such neuron is configured" in error["message"]


async def test_pinned_model_waits_quietly_for_its_node_at_start_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The usual start order (gateway before its neurons) must not log a warning: the pinned
    model waits for its node, and is loaded there once the node comes up."""
    port = free_port()
    config = CortexConfig(
        gateway=GatewaySection(poll_interval_s=0.05),
        neurons=(NeuronRef(name="gpu1", endpoint=f"http://127.0.0.1:{port}"),),
    )
    models = ModelsConfig(models=(ModelEntry(id="p", source="p", pinned=True),))
    gateway = TestServer(make_app(config, models), host="127.0.0.1")
    neuron = FaultyNeuron(load_s=0.01)
    node = TestServer(neuron.app(), host="127.0.0.1", port=port)
    with caplog.at_level("INFO"):
        await gateway.start_server()  # nothing listens on the node's port yet
        try:
            await node.start_server()
            async with asyncio.timeout(5):
                while "p" not in neuron.models or neuron.models["p"].state != "loaded":
                    await asyncio.sleep(0.01)
        finally:
            await gateway.close()
            await node.close()
    assert neuron.loads == 1
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name != "asyncio"]
    assert not warned, caplog.text  # asyncio's: another test's object collected during this one
