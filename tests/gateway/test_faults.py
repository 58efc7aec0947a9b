"""Node faults against fake neurons (test doubles serving /status, load, unload, chat): a pinned
model is re-placed when its node goes down, and a request waiting on a stalled node is retried
elsewhere once the node is marked down; down nodes are probed often."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cortex.config import CortexConfig, GatewaySection, ModelEntry, NeuronRef
from cortex.errors import ModelNotLoaded
from cortex.gateway.app import wire
from cortex.gateway.core import Gateway
from cortex.gateway.exchange import Exchange
from cortex.gateway.fleet import DOWN_PROBE_S, probe_delay
from cortex.gateway.settings import Live
from cortex.protocol.neuron import LoadRequest, ModelStatus
from tests.gateway.test_loads import GB, FakeNeuron

COMPLETION = b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'


@dataclass
class FaultyNeuron(FakeNeuron):
    """A FakeNeuron served over HTTP (the chat path needs a real server): its /status can
    fail and its chat can stall forever; ``chatting`` is set once a chat request arrived."""

    failing: bool = False
    stall: bool = False
    chatting: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/status", self.http_status)
        app.router.add_post("/models/load", self.http_load)
        app.router.add_post("/models/unload", self.http_unload)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def http_status(self, request: web.Request) -> web.Response:
        if self.failing:
            return web.Response(status=500)
        return web.Response(
            body=msgspec.json.encode(self.status()), content_type="application/json"
        )

    async def http_load(self, request: web.Request) -> web.Response:
        await self.load(msgspec.json.decode(await request.read(), type=LoadRequest))
        return web.json_response({})

    async def http_unload(self, request: web.Request) -> web.Response:
        with contextlib.suppress(ModelNotLoaded):
            self.unload((await request.json())["model"])
        return web.json_response({})

    async def chat(self, request: web.Request) -> web.Response:
        self.chatting.set()
        if self.stall:
            await asyncio.Event().wait()
        return web.Response(body=COMPLETION, content_type="application/json")

    def holding(self, model: str) -> FaultyNeuron:
        self.models[model] = ModelStatus(
            id=model, state="loaded", harness="fake", device="cpu", source=model,
            quantization="none", bytes=GB // 2, loaded_at=time.time(),
        )  # fmt: skip
        return self


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, tuple[FaultyNeuron, str]]]:
    fakes = {"n1": FaultyNeuron(load_s=0.05), "n2": FaultyNeuron(load_s=0.05)}
    started = {}
    for name, fake in fakes.items():
        server = TestServer(fake.app(), host="127.0.0.1")
        await server.start_server()
        started[name] = server
    yield {name: (fakes[name], str(started[name].make_url("")).rstrip("/")) for name in fakes}
    for server in started.values():
        await server.close()


async def _gateway(
    servers: dict[str, tuple[FaultyNeuron, str]], entry: ModelEntry
) -> tuple[Gateway, aiohttp.ClientSession]:
    config = CortexConfig(
        gateway=GatewaySection(poll_interval_s=0.05, first_byte_timeout_s=30.0),
        neurons=tuple(NeuronRef(name=name, endpoint=url) for name, (_, url) in servers.items()),
    )
    session = aiohttp.ClientSession()
    gateway = wire(Live.of(config, [entry]), session)
    await gateway.fleet.start()
    return gateway, session


async def _close(gateway: Gateway, session: aiohttp.ClientSession) -> None:
    await gateway.loader.stop()
    await gateway.fleet.stop()
    await session.close()


async def test_a_pinned_model_is_re_placed_when_its_node_goes_down(
    servers: dict[str, tuple[FaultyNeuron, str]],
) -> None:
    n1, n2 = servers["n1"][0].holding("p"), servers["n2"][0]
    gateway, session = await _gateway(servers, ModelEntry(id="p", source="p", pinned=True))
    try:
        n1.failing = True
        async with asyncio.timeout(5):
            while "p" not in n2.models or n2.models["p"].state != "loaded":
                await asyncio.sleep(0.02)
        assert n2.loads == 1 and gateway.fleet.neurons["n1"].health == "down"
    finally:
        await _close(gateway, session)


async def test_a_request_on_a_stalled_node_is_retried_once_it_is_marked_down(
    servers: dict[str, tuple[FaultyNeuron, str]],
) -> None:
    n1 = servers["n1"][0].holding("m")
    n1.stall = True
    gateway, session = await _gateway(servers, ModelEntry(id="m", source="m"))
    try:
        exchange = Exchange("openai", "/v1/chat/completions")
        started = time.monotonic()
        task = asyncio.create_task(
            gateway.open(gateway.resolve("m"), "/chat/completions", b"{}", exchange)
        )
        await asyncio.wait_for(n1.chatting.wait(), 5)  # the request reached n1, which stalls
        assert not task.done() and exchange.node == "n1"
        n1.failing = True  # its polls fail too now: down after two of them
        upstream = await asyncio.wait_for(task, 5)
        assert exchange.node == "n2" and time.monotonic() - started < 5  # not 30 s
        assert msgspec.json.decode(await upstream.resp.read())["usage"]["total_tokens"] == 2
        upstream.close()
    finally:
        await _close(gateway, session)


@pytest.mark.parametrize(
    ("interval", "down", "expected"),
    [(0.5, False, 0.5), (10.0, False, 10.0), (0.5, True, 0.5), (10.0, True, DOWN_PROBE_S)],
)
def test_a_down_node_is_probed_at_least_every_two_seconds(
    interval: float, down: bool, expected: float
) -> None:
    assert probe_delay(interval, down) == expected
