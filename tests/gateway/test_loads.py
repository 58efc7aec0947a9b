"""The loader's effects against a fake neuron (a test double serving /status, load, unload).

Single-flight loads, the bounded queue with its deadline (both answered with Retry-After), and
a load whose every waiter left being unloaded again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cortex.config import CortexConfig, GatewaySection, ModelEntry, NeuronRef
from cortex.errors import Overloaded, Unavailable
from cortex.gateway.fleet import Fleet
from cortex.gateway.loads import Loader
from cortex.protocol.neuron import DeviceStatus, LoadRequest, ModelStatus, NeuronStatus

GB = 1_000_000_000
ENTRY = ModelEntry(id="m", source="m", vram_gb=1.0)


@dataclass
class FakeNeuron:
    """Serves the neuron admin API; loads take ``load_s``."""

    load_s: float = 0.3
    total_bytes: int = 10 * GB
    loads: int = 0
    unloads: int = 0
    models: dict[str, ModelStatus] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/status", self.status)
        app.router.add_post("/models/load", self.load)
        app.router.add_post("/models/unload", self.unload)
        return app

    async def status(self, request: web.Request) -> web.Response:
        used = sum(m.bytes for m in self.models.values())
        device = DeviceStatus(
            id="cpu", kind="cpu", index=0, name="cpu", total_bytes=self.total_bytes,
            free_bytes=self.total_bytes - used, used_bytes=used,
        )  # fmt: skip
        status = NeuronStatus(
            name="n1", version="t", harnesses=["fake"], devices=[device],
            models=list(self.models.values()),
        )  # fmt: skip
        return web.Response(body=msgspec.json.encode(status), content_type="application/json")

    async def load(self, request: web.Request) -> web.Response:
        req = msgspec.json.decode(await request.read(), type=LoadRequest)
        self.loads += 1
        self.models[req.model] = ModelStatus(
            id=req.model, state="loading", harness="fake", device="cpu", source=req.source,
            quantization="none",
        )  # fmt: skip
        await asyncio.sleep(self.load_s)
        self.models[req.model] = msgspec.structs.replace(
            self.models[req.model], state="loaded", bytes=GB // 2, loaded_at=time.time()
        )
        return web.json_response({"model": msgspec.to_builtins(self.models[req.model])})

    async def unload(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.unloads += 1
        self.models.pop(body["model"], None)
        return web.json_response({"model": body["model"]})


@pytest.fixture
async def neuron() -> AsyncIterator[tuple[FakeNeuron, str]]:
    fake = FakeNeuron()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


async def _loader(url: str, **gateway: float) -> tuple[Loader, Fleet, aiohttp.ClientSession]:
    config = CortexConfig(
        gateway=GatewaySection(poll_interval_s=0.1, **gateway),  # type: ignore[arg-type]
        neurons=(NeuronRef(name="n1", endpoint=url),),
    )
    session = aiohttp.ClientSession()
    fleet = Fleet(config, {ENTRY.id: ENTRY}, session)
    await fleet.start()
    return Loader(config, fleet, session), fleet, session


async def _close(loader: Loader, fleet: Fleet, session: aiohttp.ClientSession) -> None:
    await loader.stop()
    await fleet.stop()
    await session.close()


async def test_concurrent_requests_for_a_cold_model_load_it_once(
    neuron: tuple[FakeNeuron, str],
) -> None:
    fake, url = neuron
    loader, fleet, session = await _loader(url)
    try:
        nodes = await asyncio.gather(*(loader.route(ENTRY) for _ in range(20)))
        assert nodes == ["n1"] * 20
        assert fake.loads == 1
    finally:
        await _close(loader, fleet, session)


async def test_full_queue_is_overloaded_with_retry_after(neuron: tuple[FakeNeuron, str]) -> None:
    _, url = neuron
    loader, fleet, session = await _loader(url, queue_depth=2)
    try:
        results = await asyncio.gather(
            *(loader.route(ENTRY) for _ in range(3)), return_exceptions=True
        )
        rejected = [r for r in results if isinstance(r, Overloaded)]
        assert len(rejected) == 1 and rejected[0].retry_after_s is not None
        assert results.count("n1") == 2
    finally:
        await _close(loader, fleet, session)


async def test_queue_deadline_is_unavailable_with_retry_after(
    neuron: tuple[FakeNeuron, str],
) -> None:
    fake, url = neuron
    fake.load_s = 1.0
    loader, fleet, session = await _loader(url, queue_wait_s=0.2)
    try:
        with pytest.raises(Unavailable, match="not ready after") as err:
            await loader.route(ENTRY)
        assert err.value.retry_after_s is not None
    finally:
        await _close(loader, fleet, session)


async def test_load_whose_waiters_all_left_is_unloaded_again(
    neuron: tuple[FakeNeuron, str],
) -> None:
    fake, url = neuron
    loader, fleet, session = await _loader(url)
    try:
        waiter = asyncio.create_task(loader.route(ENTRY))
        await asyncio.sleep(0.1)
        waiter.cancel()
        for _ in range(50):
            if fake.unloads:
                break
            await asyncio.sleep(0.05)
        assert (fake.loads, fake.unloads) == (1, 1)
        assert "m" not in fake.models
    finally:
        await _close(loader, fleet, session)


async def test_pinned_model_loads_at_start_up(neuron: tuple[FakeNeuron, str]) -> None:
    fake, url = neuron
    loader, fleet, session = await _loader(url)
    fleet.pin_overrides[ENTRY.id] = True
    try:
        loader.ensure_pinned()
        for _ in range(50):
            if fake.models.get("m") is not None and fake.models["m"].state == "loaded":
                break
            await asyncio.sleep(0.05)
        assert fake.loads == 1
        await asyncio.sleep(0.2)
        assert fake.unloads == 0, "a pinned load is kept although nobody waits for it"
    finally:
        await _close(loader, fleet, session)


def _resident(model_id: str, gb: int) -> ModelStatus:
    return ModelStatus(
        id=model_id, state="loaded", harness="fake", device="cpu", source=model_id,
        quantization="none", bytes=gb * GB, loaded_at=time.time() - 3600,
    )  # fmt: skip


async def test_defrag_moves_an_idle_model_so_an_unplaceable_one_fits() -> None:
    """x (3 GB) on n1 and y (3 GB) on n2 leave 7 GB free on each 10 GB node: z (8 GB) fits
    nowhere while both are busy. Once they are idle, defrag moves one so that z fits whole."""
    fakes = {name: FakeNeuron(load_s=0.05) for name in ("n1", "n2")}
    fakes["n1"].models["x"] = _resident("x", 3)
    fakes["n2"].models["y"] = _resident("y", 3)
    servers = [TestServer(f.app(), host="127.0.0.1") for f in fakes.values()]
    for server in servers:
        await server.start_server()
    catalogue = {m.id: m for m in (
        ModelEntry(id="x", source="x", vram_gb=3.0),
        ModelEntry(id="y", source="y", vram_gb=3.0),
        ModelEntry(id="z", source="z", vram_gb=8.0),
    )}  # fmt: skip
    config = CortexConfig(
        gateway=GatewaySection(poll_interval_s=0.1),
        neurons=tuple(
            NeuronRef(name=n, endpoint=str(s.make_url("")).rstrip("/"))
            for n, s in zip(fakes, servers, strict=True)
        ),
    )
    session = aiohttp.ClientSession()
    fleet = Fleet(config, catalogue, session)
    await fleet.start()
    loader = Loader(config, fleet, session)
    try:
        fleet.counts("x", "n1").in_flight = fleet.counts("y", "n2").in_flight = 1
        with pytest.raises(Unavailable):
            await loader.route(catalogue["z"])
        fleet.counts("x", "n1").in_flight = fleet.counts("y", "n2").in_flight = 0
        await loader.defrag()
        holders = [n for n, f in fakes.items() if sorted(f.models) == ["x", "y"]]
        assert len(holders) == 1, "both small models now share one node"
        assert sum(f.unloads for f in fakes.values()) == 1, "one idle model moved, none evicted"
        node = await loader.route(catalogue["z"])
        assert node != holders[0]
        assert sum(f.unloads for f in fakes.values()) == 1, "z placed without an eviction"
    finally:
        await _close(loader, fleet, session)
        for server in servers:
            await server.close()
