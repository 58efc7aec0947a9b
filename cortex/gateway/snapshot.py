"""The fleet as the gateway sees it: one immutable snapshot that every placement policy reads.

Pure: built from the neurons' last GET /status answers plus what the gateway counts itself; no
I/O, no clock. Policies (router, evictor, defrag) take a ``FleetView`` and return decisions.

Memory rule: a loading or loaded model occupies ``max(vram_gb, measured bytes)``, so a model's
declared size is reserved from the moment its load is asked for, even while the neuron has
measured less (or nothing yet). Memory the device reports used beyond what cortex's models
measured is "foreign" (CUDA contexts, other processes) and is never counted free. Hence

    free(device) = total − foreign − Σ occupancy of the models on it

which is at most the free memory the device reports, and falls by exactly a model's occupancy
when it is placed there (so plans can add and subtract occupancies without re-reading the GPU).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec

from cortex.config import GB, ModelEntry, SamplingDefaults
from cortex.protocol.neuron import DeviceStatus, ModelState, ModelStatus, NeuronStatus

NodeHealth = Literal["up", "suspect", "down"]


@dataclass
class Usage:
    """What the gateway itself knows about one model on one node (keyed by (model_id, node)).

    The gateway sees requests before the neuron does, so its counts are fresher than the last
    poll; ``loading_on`` is the device it asked the node to load onto, until a poll shows it.
    Owned and changed by ``Fleet`` only (``Fleet.claim``); a snapshot copies the values.
    """

    last_used: float | None = None
    in_flight: int = 0
    queued: int = 0
    loading_on: str | None = None
    finished: int = 0  # in-flight requests released so far
    finished_at_poll: int = 0  # ``finished`` when the node's last status poll was sent

    def neuron_in_flight(self, reported: int) -> int:
        """The node's reported in-flight count less the gateway's requests that ended since
        that poll was sent: a model whose last request just ended is not busy until the next
        poll (it would block its eviction for a poll interval)."""
        return max(0, reported - (self.finished - self.finished_at_poll))


class Resident(msgspec.Struct, frozen=True, kw_only=True):
    """One model on one device of one node, in any neuron-reported state."""

    model_id: str
    node: str
    device: str
    state: ModelState
    measured_bytes: int = 0
    declared_bytes: int = 0
    context_length: int = 0
    loaded_at: float | None = None
    last_used: float | None = None
    in_flight: int = 0
    queued: int = 0
    pinned: bool = False
    priority: int = 0
    allowed_nodes: tuple[str, ...] = ()
    sampling: SamplingDefaults | None = None  # the neuron's defaults in use, once loaded

    @property
    def occupancy(self) -> int:
        """Bytes this model holds for placement: declared size counts while loading or loaded."""
        if self.state in ("loading", "loaded"):
            return max(self.declared_bytes, self.measured_bytes)
        return self.measured_bytes

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.queued > 0

    @property
    def recency(self) -> float:
        """When it last served or, never used, when it arrived: the LRU sort key."""
        return self.last_used or self.loaded_at or 0.0

    def movable(self, now: float, min_resident_s: float) -> bool:
        """May be unloaded now: loaded, not pinned, idle, and resident at least min_resident_s.

        An unknown ``loaded_at`` counts as old, so a neuron that omits it cannot make its
        models unevictable forever.
        """
        fresh = self.loaded_at is not None and now - self.loaded_at < min_resident_s
        return self.state == "loaded" and not self.pinned and not self.busy and not fresh


class Device(msgspec.Struct, frozen=True, kw_only=True):
    """One accelerator (or the CPU) of a node; its residents live on the ``NodeView``."""

    id: str
    kind: Literal["cuda", "cpu"]
    total_bytes: int
    foreign_bytes: int = 0

    @property
    def capacity(self) -> int:
        """The most cortex could ever use here: everything but foreign memory."""
        return self.total_bytes - self.foreign_bytes


class NodeView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    health: NodeHealth
    in_flight: int = 0
    devices: tuple[Device, ...] = ()
    models: tuple[Resident, ...] = ()

    def on_device(self, device_id: str) -> list[Resident]:
        return [m for m in self.models if m.device == device_id]

    def free_bytes(self, device: Device) -> int:
        """Placement free memory; may be negative when a device is overcommitted."""
        return device.capacity - sum(m.occupancy for m in self.on_device(device.id))

    def holds(self, model_id: str) -> Resident | None:
        """This node's copy of ``model_id`` if loading or loaded, else None."""
        for m in self.models:
            if m.model_id == model_id and m.state in ("loading", "loaded"):
                return m
        return None


class FleetView(msgspec.Struct, frozen=True, kw_only=True):
    """Every configured neuron, sorted by name so that every policy is deterministic."""

    nodes: tuple[NodeView, ...] = ()

    def node(self, name: str) -> NodeView | None:
        return next((n for n in self.nodes if n.name == name), None)

    def holders(self, model_id: str) -> Iterator[tuple[NodeView, Resident]]:
        """(node, copy) for each non-down node where ``model_id`` is loading or loaded."""
        for node in self.nodes:
            copy = node.holds(model_id) if node.health != "down" else None
            if copy is not None:
                yield node, copy


def fleet_from_statuses(
    statuses: Mapping[str, NeuronStatus | None],
    catalogue: Mapping[str, ModelEntry],
    gateway_usage: Mapping[tuple[str, str], Usage],
    *,
    suspect: Collection[str] = frozenset(),
) -> FleetView:
    """Build the snapshot. ``statuses`` maps each neuron name to its last status, None = down.

    ``catalogue`` maps model id to entry (``Catalogue.by_id``, with runtime pins applied);
    ``gateway_usage`` is keyed by (model_id, node); ``suspect`` names nodes whose status is
    stale (a missed poll).
    """
    nodes = []
    for name in sorted(statuses):
        status = statuses[name]
        if status is None:
            nodes.append(NodeView(name=name, health="down"))
            continue
        usage = {model: u for (model, node), u in gateway_usage.items() if node == name}
        models = _residents(name, status, catalogue, usage)
        health: NodeHealth = "suspect" if name in suspect else "up"
        devices = tuple(_device(d, status.models) for d in status.devices)
        nodes.append(
            NodeView(
                name=name,
                health=health,
                in_flight=status.in_flight,
                devices=devices,
                models=models,
            )
        )
    return FleetView(nodes=tuple(nodes))


def _device(status: DeviceStatus, models: list[ModelStatus]) -> Device:
    measured = sum(m.bytes for m in models if m.device == status.id)
    used = status.total_bytes - status.free_bytes
    return Device(
        id=status.id,
        kind=status.kind,
        total_bytes=status.total_bytes,
        foreign_bytes=max(0, used - measured),
    )


def _residents(
    node: str,
    status: NeuronStatus,
    catalogue: Mapping[str, ModelEntry],
    usage: Mapping[str, Usage],
) -> tuple[Resident, ...]:
    reported = {m.id for m in status.models}
    residents = [
        _resident(node, m, catalogue.get(m.id), usage.get(m.id, Usage())) for m in status.models
    ]
    for model_id in sorted(usage):
        device = usage[model_id].loading_on
        if device is not None and model_id not in reported:
            pending = ModelStatus(
                id=model_id, state="loading", harness="", device=device, source="", quantization=""
            )
            residents.append(_resident(node, pending, catalogue.get(model_id), usage[model_id]))
    return tuple(residents)


def _resident(
    node: str,
    status: ModelStatus,
    entry: ModelEntry | None,
    usage: Usage,
) -> Resident:
    """Merge the neuron's report, the catalogue entry and the gateway's own counts.

    Both sides count the same requests, the gateway earlier: take the larger count (the node's
    less what ended since its poll) and the later last_used.
    """
    last_used = max((t for t in (status.last_used, usage.last_used) if t is not None), default=None)
    return Resident(
        model_id=status.id,
        node=node,
        device=status.device,
        state=status.state,
        measured_bytes=status.bytes,
        declared_bytes=round(entry.vram_gb * GB) if entry else 0,
        context_length=(entry.context_length if entry else 0) or status.context_length,
        loaded_at=status.loaded_at,
        last_used=last_used,
        in_flight=max(usage.neuron_in_flight(status.in_flight), usage.in_flight),
        queued=max(status.queued, usage.queued),
        pinned=entry.pinned if entry else False,
        priority=entry.priority if entry else 0,
        allowed_nodes=entry.nodes if entry else (),
        sampling=status.sampling,
    )
