"""The loader's effects against in-memory fake neurons (a test double of ``NeuronClient``).

Single-flight loads, the bounded queue with its deadline (both answered with Retry-After), a
load whose every waiter left being unloaded again, pins and defrag moves. No HTTP server: the
fleet polls and the loader loads through the fake client, which keeps each node's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from cortex.config import CortexConfig, GatewaySection, ModelEntry, NeuronRef
from cortex.errors import ModelNotLoaded, Overloaded, Unavailable
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.fleet import Fleet
from cortex.gateway.loads import Loader
from cortex.gateway.neuron_client import NeuronUnreachable
from cortex.gateway.settings import Live
from cortex.protocol.neuron import DeviceStatus, LoadRequest, ModelStatus, NeuronStatus

GB = 1_000_000_000
ENTRY = ModelEntry(id="m", source="m", vram_gb=1.0)


@dataclass
class FakeNeuron:
    """One node's admin API state; loads take ``load_s`` (simulated on the event loop), or,
    when ``hold`` is given, last until the test sets it. ``loading`` is set once a load began."""

    name: str = "n1"
    load_s: float = 0.3
    hold: asyncio.Event | None = None
    loading: asyncio.Event = field(default_factory=asyncio.Event)
    total_bytes: int = 10 * GB
    loads: int = 0
    unloads: int = 0
    models: dict[str, ModelStatus] = field(default_factory=dict)

    def status(self) -> NeuronStatus:
        used = sum(m.bytes for m in self.models.values())
        device = DeviceStatus(
            id="cpu", kind="cpu", index=0, name="cpu", total_bytes=self.total_bytes,
            free_bytes=self.total_bytes - used, used_bytes=used,
        )  # fmt: skip
        return NeuronStatus(
            name=self.name, version="t", harnesses=["fake"], devices=[device],
            models=list(self.models.values()),
        )  # fmt: skip

    async def load(self, req: LoadRequest) -> None:
        self.loads += 1
        self.models[req.model] = ModelStatus(
            id=req.model, state="loading", harness="fake", device="cpu", source=req.source,
            quantization="none",
        )  # fmt: skip
        self.loading.set()
        if self.hold is not None:
            await self.hold.wait()
        else:
            await asyncio.sleep(self.load_s)
        self.models[req.model] = msgspec.structs.replace(
            self.models[req.model], state="loaded", bytes=GB // 2, loaded_at=time.time()
        )

    def unload(self, model: str) -> None:
        if self.models.pop(model, None) is None:
            raise ModelNotLoaded(f"{model} is not on {self.name}")
        self.unloads += 1


class FakeNeuronClient:
    """``NeuronClient`` over in-memory ``FakeNeuron``s, keyed by node name."""

    def __init__(self, neurons: Mapping[str, FakeNeuron]) -> None:
        self.neurons = neurons

    async def status(self, ref: NeuronRef, timeout_s: float) -> NeuronStatus:
        return self.neurons[ref.name].status()

    async def post(self, ref: NeuronRef, path: str, body: bytes, timeout_s: float) -> bytes:
        neuron = self.neurons[ref.name]
        if path == "/models/load":
            await neuron.load(msgspec.json.decode(body, type=LoadRequest))
        elif path == "/models/unload":
            neuron.unload(msgspec.json.decode(body)["model"])
        else:
            raise AssertionError(f"unexpected POST {path}")
        return b"{}"


async def _loader(
    fakes: Mapping[str, FakeNeuron],
    catalogue: Mapping[str, ModelEntry] | None = None,
    **gateway: Any,
) -> tuple[Loader, Fleet]:
    config = CortexConfig(
        gateway=GatewaySection(poll_interval_s=0.1, **gateway),
        neurons=tuple(NeuronRef(name=n, endpoint=f"http://{n}.invalid") for n in fakes),
    )
    session: Any = None  # nothing here reaches the network
    live = Live.of(config, list((catalogue or {ENTRY.id: ENTRY}).values()))
    fleet = Fleet(live, Catalogue(live), session, FakeNeuronClient(fakes))
    await fleet.start()
    return Loader(live, fleet, session), fleet


@pytest.fixture
async def neuron() -> AsyncIterator[tuple[FakeNeuron, Loader, Fleet]]:
    fake = FakeNeuron()
    loader, fleet = await _loader({"n1": fake})
    yield fake, loader, fleet
    await loader.stop()
    await fleet.stop()


async def test_concurrent_requests_for_a_cold_model_load_it_once(
    neuron: tuple[FakeNeuron, Loader, Fleet],
) -> None:
    fake, loader, _ = neuron
    nodes = await asyncio.gather(*(loader.route(ENTRY) for _ in range(20)))
    assert nodes == ["n1"] * 20
    assert fake.loads == 1


async def _own_loader(**gateway: Any) -> tuple[FakeNeuron, Loader, Fleet]:
    fake = FakeNeuron()
    loader, fleet = await _loader({"n1": fake}, **gateway)
    return fake, loader, fleet


async def _close(loader: Loader, fleet: Fleet) -> None:
    await loader.stop()
    await fleet.stop()


async def test_full_queue_is_overloaded_with_retry_after() -> None:
    _, loader, fleet = await _own_loader(queue_depth=2)
    try:
        results = await asyncio.gather(
            *(loader.route(ENTRY) for _ in range(3)), return_exceptions=True
        )
        rejected = [r for r in results if isinstance(r, Overloaded)]
        assert len(rejected) == 1 and rejected[0].retry_after_s is not None
        assert results.count("n1") == 2
    finally:
        await _close(loader, fleet)


async def test_queue_deadline_is_unavailable_with_retry_after() -> None:
    fake, loader, fleet = await _own_loader(queue_wait_s=0.2)
    fake.hold = asyncio.Event()  # never set: the load outlasts any deadline
    try:
        with pytest.raises(Unavailable, match="not ready after") as err:
            await loader.route(ENTRY)
        assert err.value.retry_after_s is not None
    finally:
        await _close(loader, fleet)


async def test_load_whose_waiters_all_left_is_unloaded_again(
    neuron: tuple[FakeNeuron, Loader, Fleet],
) -> None:
    fake, loader, _ = neuron
    fake.hold = asyncio.Event()
    waiter = asyncio.create_task(loader.route(ENTRY))
    await asyncio.wait_for(fake.loading.wait(), 5)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)  # the only waiter has left
    fake.hold.set()  # and only now does the load finish
    await asyncio.gather(*(g.load for g in loader.gates.values() if g.load))
    assert (fake.loads, fake.unloads) == (1, 1)
    assert "m" not in fake.models


async def test_a_load_pinned_meanwhile_is_kept_when_its_waiters_leave(
    neuron: tuple[FakeNeuron, Loader, Fleet], caplog: pytest.LogCaptureFixture
) -> None:
    fake, loader, fleet = neuron
    caplog.set_level(logging.INFO, logger="cortex.gateway.loads")
    fake.hold = asyncio.Event()
    waiter = asyncio.create_task(loader.route(ENTRY))
    await asyncio.wait_for(fake.loading.wait(), 5)
    fleet.catalogue.set_pin(ENTRY.id, True)  # `cortex pin` while the load is under way
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    fake.hold.set()
    await asyncio.gather(*(g.load for g in loader.gates.values() if g.load))
    assert (fake.loads, fake.unloads) == (1, 0) and fake.models["m"].state == "loaded"
    assert "keeping m although every waiting client left: it is pinned" in caplog.text


async def test_pinned_model_loads_at_start_up(neuron: tuple[FakeNeuron, Loader, Fleet]) -> None:
    fake, loader, fleet = neuron
    fleet.catalogue.set_pin(ENTRY.id, True)
    loader.ensure_pinned()
    await asyncio.wait_for(fake.loading.wait(), 5)  # the pinned load has begun
    await asyncio.gather(*(g.load for g in loader.gates.values() if g.load))
    assert fake.loads == 1 and fake.models["m"].state == "loaded"
    assert fake.unloads == 0, "a pinned load is kept although nobody waits for it"


def _resident(model_id: str, gb: int) -> ModelStatus:
    return ModelStatus(
        id=model_id, state="loaded", harness="fake", device="cpu", source=model_id,
        quantization="none", bytes=gb * GB, loaded_at=time.time() - 3600,
    )  # fmt: skip


async def test_defrag_moves_an_idle_model_so_an_unplaceable_one_fits() -> None:
    """x (3 GB) on n1 and y (3 GB) on n2 leave 7 GB free on each 10 GB node: z (8 GB) fits
    nowhere while both are busy. Once they are idle, defrag moves one so that z fits whole."""
    fakes = {name: FakeNeuron(name=name, load_s=0.05) for name in ("n1", "n2")}
    fakes["n1"].models["x"] = _resident("x", 3)
    fakes["n2"].models["y"] = _resident("y", 3)
    catalogue = {m.id: m for m in (
        ModelEntry(id="x", source="x", vram_gb=3.0),
        ModelEntry(id="y", source="y", vram_gb=3.0),
        ModelEntry(id="z", source="z", vram_gb=8.0),
    )}  # fmt: skip
    loader, fleet = await _loader(fakes, catalogue)
    try:
        busy = [fleet.claim("x", "n1", "in_flight"), fleet.claim("y", "n2", "in_flight")]
        with pytest.raises(Unavailable):
            await loader.route(catalogue["z"])
        for claim in busy:
            claim.release()
        await loader.defrag()
        holders = [n for n, f in fakes.items() if sorted(f.models) == ["x", "y"]]
        assert len(holders) == 1, "both small models now share one node"
        assert sum(f.unloads for f in fakes.values()) == 1, "one idle model moved, none evicted"
        node = await loader.route(catalogue["z"])
        assert node != holders[0]
        assert sum(f.unloads for f in fakes.values()) == 1, "z placed without an eviction"
    finally:
        await _close(loader, fleet)


async def test_a_neuron_that_does_not_answer_a_load_is_suspect_and_the_request_told_so(
    neuron: tuple[FakeNeuron, Loader, Fleet], caplog: pytest.LogCaptureFixture
) -> None:
    fake, loader, _ = neuron

    async def unreachable(req: LoadRequest) -> None:
        raise NeuronUnreachable("POST /models/load: connection reset")

    fake.load = unreachable  # type: ignore[method-assign]
    with pytest.raises(Unavailable, match="n1 did not answer /models/load"):
        await loader.route(ENTRY)
    # Suspect until its next good poll (which the fake answers at once, so read the log).
    assert "node n1 suspect: POST /models/load: connection reset" in caplog.text
