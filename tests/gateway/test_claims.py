"""The fleet's request counts have one owner: claims, released exactly once."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import msgspec

import cortex.gateway
from cortex.config import CortexConfig, NeuronRef
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.fleet import Fleet
from cortex.gateway.settings import Live
from cortex.protocol.neuron import ModelStatus, NeuronStatus
from tests.gateway.test_loads import FakeNeuron, FakeNeuronClient


def _fleet() -> Fleet:
    session: Any = None  # counting never touches the network
    live = Live.of(CortexConfig())
    return Fleet(live, Catalogue(live), session)


def test_release_is_idempotent_and_stamps_last_used() -> None:
    fleet = _fleet()
    claim = fleet.claim("m", "n1", "in_flight")
    assert fleet.counts("m", "n1").in_flight == 1
    claim.release()
    claim.release()  # a retry path and finish() may both release
    usage = fleet.counts("m", "n1")
    assert usage.in_flight == 0
    assert usage.last_used is not None


def test_in_flight_and_queued_are_counted_apart() -> None:
    fleet = _fleet()
    running = [fleet.claim("m", "n1", "in_flight") for _ in range(3)]
    waiting = fleet.claim("m", "n1", "queued")
    usage = fleet.counts("m", "n1")
    assert (usage.in_flight, usage.queued) == (3, 1)
    for claim in running:
        claim.release()
    waiting.release()
    assert (usage.in_flight, usage.queued) == (0, 0)


class SlowStatusClient(FakeNeuronClient):
    """Test double: a neuron whose status answer is taken when the poll arrives (``asked`` is
    set then) but reaches the gateway only when ``answer`` is set, and which reports
    ``in_flight`` requests on model m."""

    def __init__(self, neuron: FakeNeuron) -> None:
        super().__init__({"n1": neuron})
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()
        self.in_flight = 0

    async def status(self, ref: NeuronRef, timeout_s: float) -> NeuronStatus:
        status = await super().status(ref, timeout_s)
        loaded = ModelStatus(
            id="m", state="loaded", harness="fake", device="cpu", source="m",
            quantization="none", in_flight=self.in_flight,
        )  # fmt: skip
        self.asked.set()
        await self.answer.wait()
        return msgspec.structs.replace(status, models=[loaded])


def _in_flight(fleet: Fleet) -> int:
    [node] = fleet.view().nodes
    [model] = node.models
    return model.in_flight


async def test_a_request_that_ended_after_the_poll_left_is_not_counted_busy() -> None:
    config = CortexConfig(neurons=(NeuronRef(name="n1", endpoint="http://n1.invalid"),))
    client = SlowStatusClient(FakeNeuron())
    session: Any = None
    live = Live.of(config)
    fleet = Fleet(live, Catalogue(live), session, client)
    state = fleet.neurons["n1"]
    claim = fleet.claim("m", "n1", "in_flight")
    client.in_flight = 1  # the neuron still runs it when the poll arrives
    poll = asyncio.create_task(fleet._poll(state))
    await asyncio.wait_for(client.asked.wait(), 5)  # the poll has left
    claim.release()  # the answer's last byte reached the client meanwhile
    client.answer.set()
    await poll
    assert _in_flight(fleet) == 0  # evictable now, not one poll interval later

    client.in_flight = 2  # two requests from elsewhere (another gateway, a direct client)
    await fleet._poll(state)
    assert _in_flight(fleet) == 2
    mine = fleet.claim("m", "n1", "in_flight")
    assert _in_flight(fleet) == 2  # ours may be among them: the larger count holds
    mine.release()
    assert _in_flight(fleet) == 1  # the node's count less the one that ended since its poll


def test_a_load_marks_its_copy_loading_for_the_block_only() -> None:
    fleet = _fleet()
    with fleet.loading("m", "n1", "cuda:0"):
        assert fleet.counts("m", "n1").loading_on == "cuda:0"
    assert fleet.counts("m", "n1").loading_on is None
    try:
        with fleet.loading("m", "n1", "cuda:0"):
            raise RuntimeError("the load request failed")
    except RuntimeError:
        pass
    assert fleet.counts("m", "n1").loading_on is None


def test_only_the_fleet_writes_usage() -> None:
    """``Usage`` has one writer: no other gateway module assigns or bumps its fields."""
    # Its fields by name (``finished`` left out: ``Exchange.finished`` is another record's).
    fields = {"last_used", "in_flight", "queued", "loading_on", "finished_at_poll"}
    gateway = Path(cortex.gateway.__file__).parent
    writers = set()
    for path in gateway.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AugAssign | ast.AnnAssign)
                else []
            )
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr in fields:
                    writers.add(path.name)
    assert writers <= {"fleet.py"}, writers
