"""Where one request for one model goes. Pure: a function of the fleet snapshot and ``now``.

Order of preference, each step only when the one before has no answer:

1. ``Route``: the model is loaded on an up node (then on a suspect one). With a ``session``
   key, the copy that session hashes to (rendezvous hashing: each session prefers one node,
   and adding or losing a copy moves only the sessions that preferred it), unless that copy
   is much busier than the least busy one (``BALANCE_ABS`` more requests in flight or queued
   and ``BALANCE_REL`` times as many: SGLang router's defaults). Otherwise, or without a key,
   the copy with the fewest requests in flight or queued, then the least busy node, then the
   name.
2. ``Wait``: the model is loading somewhere: join that load rather than start another.
3. ``Load``: on an allowed up node, the device where it fits leaving the least free memory
   (best fit), GPUs before the CPU.
4. ``Load`` with evictions: the device where making room costs least (bytes, then models).
5. ``Impossible``: with a reason an operator can act on.

A copy that is already loaded is served even on a node outside the entry's ``nodes`` (an
operator put it there with ``cortex load --node``); ``nodes`` restricts new loads only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import msgspec

from cortex.config import GB, ModelEntry
from cortex.gateway.evictor import Strategy, plan_eviction
from cortex.gateway.snapshot import Device, FleetView, NodeView, Resident

# Until a neuron returns (it is polled every 2 s while down) a short Retry-After is honest.
RETRY_NODE_DOWN_S = 5.0
# A model of unknown size (vram_gb = 0) needs some free memory, however little.
_UNKNOWN_SIZE_BYTES = 1
# A session leaves its node only when that copy has BALANCE_ABS more requests (in flight plus
# queued) than the least busy copy AND more than BALANCE_REL times as many.
BALANCE_ABS = 64
BALANCE_REL = 1.5


class Route(msgspec.Struct, frozen=True):
    node: str


class Wait(msgspec.Struct, frozen=True):
    node: str


class Load(msgspec.Struct, frozen=True):
    node: str
    device: str
    evict: tuple[tuple[str, str], ...] = ()  # (node, model_id), in unload order


class Impossible(msgspec.Struct, frozen=True):
    """Nothing to do now. ``retry_after_s``: when asking again may help; None: never (no
    configured neuron may serve the model at all)."""

    reason: str
    retry_after_s: float | None = 30.0


Decision = Route | Wait | Load | Impossible


def choose(
    fleet: FleetView,
    model: ModelEntry,
    now: float,
    strategy: Strategy,
    min_resident_s: float,
    session: str | None = None,
) -> Decision:
    """The one thing the gateway should do next to serve ``model``; ``session``: the
    request's affinity key (see ``cortex.gateway.sessions``), None for plain least-busy."""
    return _existing(fleet, model.id, session) or _place(
        fleet, model, now, strategy, min_resident_s
    )


def allowed_up_nodes(fleet: FleetView, model: ModelEntry) -> list[NodeView]:
    """Nodes where a new copy of ``model`` may be loaded (``nodes`` empty: any up node)."""
    return [
        n for n in fleet.nodes if n.health == "up" and (not model.nodes or n.name in model.nodes)
    ]


def needed_bytes(model: ModelEntry) -> int:
    return round(model.vram_gb * GB) or _UNKNOWN_SIZE_BYTES


def _existing(fleet: FleetView, model_id: str, session: str | None) -> Route | Wait | None:
    for health in ("up", "suspect"):
        copies = [(n, c) for n, c in fleet.holders(model_id) if n.health == health]
        loaded = [(n.name, _load(c), n.in_flight) for n, c in copies if c.state == "loaded"]
        if loaded:
            return Route(pick(loaded, session))
        if copies:
            return Wait(copies[0][0].name)
    return None


def pick(candidates: Sequence[tuple[str, int, int]], session: str | None) -> str:
    """Among ``(name, load, tie_break)`` candidates (a non-empty list), where one request goes.

    The least loaded, then the lowest tie-break, then the name; with a ``session`` key, the
    candidate that session hashes to, unless it is much busier than the least loaded one.
    Shared by neuron copies and by ``[[upstreams]]`` serving the same model.
    """
    least = min(candidates, key=lambda c: (c[1], c[2], c[0]))
    if session is not None:
        home = max(candidates, key=lambda c: _affinity(session, c[0]))
        if not _much_busier(home[1], least[1]):
            return home[0]
    return least[0]


def _load(copy: Resident) -> int:
    return copy.in_flight + copy.queued


def _affinity(session: str, node: str) -> bytes:
    """Rendezvous weight of ``node`` for ``session``: stable across processes and restarts."""
    return hashlib.blake2b(f"{session}\0{node}".encode(), digest_size=8).digest()


def _much_busier(load: int, least: int) -> bool:
    return load - least > BALANCE_ABS and load > least * BALANCE_REL


def _place(
    fleet: FleetView, model: ModelEntry, now: float, strategy: Strategy, min_resident_s: float
) -> Decision:
    nodes = allowed_up_nodes(fleet, model)
    if model.nodes and not {n.name for n in fleet.nodes} & set(model.nodes):
        configured = ", ".join(n.name for n in fleet.nodes) or "none"
        return Impossible(
            f"{model.id} may run only on {', '.join(model.nodes)}, and no such neuron is "
            f"configured (neurons: {configured}); fix nodes in models.toml",
            retry_after_s=None,
        )
    if not nodes:
        return Impossible(_no_live_node(fleet, model), retry_after_s=RETRY_NODE_DOWN_S)
    need = needed_bytes(model)
    fits = [(n, d) for n, d in _devices(nodes) if n.free_bytes(d) >= need]
    if fits:
        node, device = min(fits, key=lambda nd: _fit_key(nd[0], nd[1], need, model.vram_gb > 0))
        return Load(node.name, device.id)
    return _cheapest_eviction(nodes, need, now, strategy, min_resident_s) or Impossible(
        _no_room(model, nodes, need)
    )


def _cheapest_eviction(
    nodes: list[NodeView], need: int, now: float, strategy: Strategy, min_resident_s: float
) -> Load | None:
    """The device where making room frees fewest bytes, then unloads fewest models."""
    best: tuple[tuple[bool, int, int, str, str], Load] | None = None
    for node, device in _devices(nodes):
        plan = plan_eviction(node, device, need, now, strategy, min_resident_s)
        if plan is None:
            continue
        freed = sum(m.occupancy for m in node.on_device(device.id) if m.model_id in plan)
        key = (device.kind != "cuda", freed, len(plan), node.name, device.id)
        if best is None or key < best[0]:
            best = (key, Load(node.name, device.id, tuple((node.name, m) for m in plan)))
    return None if best is None else best[1]


def _devices(nodes: list[NodeView]) -> Iterator[tuple[NodeView, Device]]:
    for node in nodes:
        for device in node.devices:
            yield node, device


def _fit_key(node: NodeView, device: Device, need: int, known: bool) -> tuple[bool, int, str, str]:
    """GPUs first; best fit for a known size, most free memory for an unknown one."""
    left = node.free_bytes(device) - need
    return (device.kind != "cuda", left if known else -left, node.name, device.id)


def _no_live_node(fleet: FleetView, model: ModelEntry) -> str:
    allowed = ", ".join(model.nodes) if model.nodes else "any"
    up = ", ".join(n.name for n in fleet.nodes if n.health == "up") or "none"
    return f"no live neuron may serve {model.id} (allowed: {allowed}; up: {up})"


def _no_room(model: ModelEntry, nodes: list[NodeView], need: int) -> str:
    needs = f"{model.id} needs {_gb(need)}" if model.vram_gb else f"{model.id} (vram_gb unset)"
    devices = list(_devices(nodes))
    if not devices:
        return f"{needs}; no allowed live neuron reports a device"
    big = [f"{n.name}:{d.id}" for n, d in devices if d.capacity >= need]
    if not big:
        node, device = min(devices, key=lambda nd: (-nd[1].capacity, nd[0].name, nd[1].id))
        return f"{needs}; the largest device ({node.name}:{device.id}) has {_gb(device.capacity)}"
    return (
        f"{needs}; every candidate model on {', '.join(big)} is pinned, busy, loading "
        "or loaded too recently to evict"
    )


def _gb(n: int) -> str:
    return f"{n / GB:.1f} GB"
