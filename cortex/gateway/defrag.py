"""Consolidate scattered free memory so that a model that could not be placed fits somewhere.

Pure: plans moves, never performs them. A move unloads an idle model from one device and loads
it on another device where it fits *without* evicting anything; only ``Resident.movable``
models move, and only to other nodes that their catalogue entry allows and that hold no copy.

For each wanted model (in the order given) that fits nowhere now, the plan picks the target
device needing the fewest moves, then the fewest bytes moved, GPUs first, then by name. Later
wanted models are planned against the fleet as it will be after the earlier moves and loads.
The search tries every subset of a device's movable models, smallest first: exponential in
models per device, which is a handful on real GPUs.
"""

from __future__ import annotations

from itertools import combinations

import msgspec

from cortex.config import GB, ModelEntry
from cortex.gateway.router import allowed_up_nodes
from cortex.gateway.snapshot import Device, FleetView, NodeView, Resident


class Move(msgspec.Struct, frozen=True):
    """Unload ``model_id`` from ``from_node``, then load it on ``to_node``'s ``to_device``."""

    model_id: str
    from_node: str
    to_node: str
    to_device: str


Slot = tuple[str, str]  # (node, device id)
Placement = list[tuple[Resident, Slot]]  # a model to move and where it goes


def plan_defrag(
    fleet: FleetView, wanted: list[ModelEntry], now: float, min_resident_s: float
) -> list[Move]:
    """Moves that make room for as many ``wanted`` models as possible; [] when none helps."""
    moves: list[Move] = []
    for model in wanted:
        need = round(model.vram_gb * GB)
        if need == 0 or next(fleet.holders(model.id), None) or _fits(fleet, model, need):
            continue
        best = _best_target(fleet, model, need, now, min_resident_s)
        if best is None:
            continue
        target, placement = best
        moves += [Move(m.model_id, m.node, slot[0], slot[1]) for m, slot in placement]
        fleet = _reserve(_apply(fleet, placement), model, target, need)
    return moves


def _fits(fleet: FleetView, model: ModelEntry, need: int) -> bool:
    return any(n.free_bytes(d) >= need for n in allowed_up_nodes(fleet, model) for d in n.devices)


def _best_target(
    fleet: FleetView, model: ModelEntry, need: int, now: float, min_resident_s: float
) -> tuple[Slot, Placement] | None:
    """The cheapest (target slot, placement) over every allowed device, or None."""
    best: tuple[tuple[int, int, bool, str, str], Slot, Placement] | None = None
    for node in allowed_up_nodes(fleet, model):
        for device in node.devices:
            found = _clear(fleet, node, device, need, now, min_resident_s)
            if found is None:
                continue
            moved, placement = found
            key = (len(placement), moved, device.kind != "cuda", node.name, device.id)
            if best is None or key < best[0]:
                best = (key, (node.name, device.id), placement)
    return None if best is None else (best[1], best[2])


def _clear(
    fleet: FleetView, node: NodeView, device: Device, need: int, now: float, min_resident_s: float
) -> tuple[int, Placement] | None:
    """Fewest moves, then fewest bytes, that free ``need`` on ``device``: (bytes, placement)."""
    free = node.free_bytes(device)
    movable = sorted(
        (m for m in node.on_device(device.id) if m.movable(now, min_resident_s)),
        key=lambda m: (m.occupancy, m.model_id),
    )
    for size in range(1, len(movable) + 1):
        options = []
        for group in combinations(movable, size):
            moved = sum(m.occupancy for m in group)
            if free + moved < need:
                continue
            order = sorted(group, key=lambda m: (-m.occupancy, m.model_id))
            placement = _assign(fleet, order, _free_slots(fleet))
            if placement is not None:
                options.append((moved, placement))
        if options:
            return min(options, key=lambda o: o[0])
    return None


def _free_slots(fleet: FleetView) -> dict[Slot, int]:
    return {
        (n.name, d.id): n.free_bytes(d) for n in fleet.nodes if n.health == "up" for d in n.devices
    }


def _assign(fleet: FleetView, order: list[Resident], free: dict[Slot, int]) -> Placement | None:
    """Backtracking bin packing: biggest model first, each onto the best-fitting slot."""
    if not order:
        return []
    model, rest = order[0], order[1:]
    for slot in _slots_for(fleet, model, free):
        free[slot] -= model.occupancy
        tail = _assign(fleet, rest, free)
        free[slot] += model.occupancy
        if tail is not None:
            return [(model, slot), *tail]
    return None


def _slots_for(fleet: FleetView, model: Resident, free: dict[Slot, int]) -> list[Slot]:
    """Slots that can take ``model`` without evicting, least free left first: on an allowed
    node that holds no copy of it (so never its own node)."""
    fitting = []
    for (node_name, device_id), left in free.items():
        node = fleet.node(node_name)
        allowed = not model.allowed_nodes or node_name in model.allowed_nodes
        if node and allowed and not node.holds(model.model_id) and left >= model.occupancy:
            fitting.append((left - model.occupancy, (node_name, device_id)))
    return [slot for _, slot in sorted(fitting)]


def _apply(fleet: FleetView, placement: Placement) -> FleetView:
    """The fleet once the moves are done: each model a pending load at its new home."""
    for model, (node_name, device_id) in placement:
        moved = msgspec.structs.replace(
            model,
            node=node_name,
            device=device_id,
            state="loading",
            measured_bytes=0,
            declared_bytes=model.occupancy,
        )
        fleet = _add(_remove(fleet, model), moved)
    return fleet


def _reserve(fleet: FleetView, model: ModelEntry, slot: Slot, need: int) -> FleetView:
    """The wanted model as a pending load on its target, so later plans leave it room."""
    pending = Resident(
        model_id=model.id, node=slot[0], device=slot[1], state="loading", declared_bytes=need
    )
    return _add(fleet, pending)


def _add(fleet: FleetView, resident: Resident) -> FleetView:
    return FleetView(
        nodes=tuple(
            msgspec.structs.replace(n, models=(*n.models, resident))
            if n.name == resident.node
            else n
            for n in fleet.nodes
        )
    )


def _remove(fleet: FleetView, resident: Resident) -> FleetView:
    return FleetView(
        nodes=tuple(
            msgspec.structs.replace(n, models=tuple(m for m in n.models if m != resident))
            for n in fleet.nodes
        )
    )
