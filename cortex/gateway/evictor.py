"""Which models to unload from one device so that a new one fits. Pure: no I/O, no clock.

Only ``Resident.movable`` models are candidates (loaded, unpinned, idle, resident at least
``min_resident_s``). The strategy orders them; the plan is the shortest prefix of that order
that frees enough, so a plan never unloads a model it did not need to under its own order.
"""

from __future__ import annotations

from typing import Literal

from cortex.gateway.snapshot import Device, NodeView, Resident

Strategy = Literal["lru", "priority"]


def eviction_order(candidates: list[Resident], strategy: Strategy) -> list[Resident]:
    """lru: least recently used first. priority: lowest priority first, LRU among equals.

    The model id breaks the last ties so that equal fleets always give equal plans.
    """
    if strategy == "priority":
        return sorted(candidates, key=lambda m: (m.priority, m.recency, m.model_id))
    return sorted(candidates, key=lambda m: (m.recency, m.model_id))


def plan_eviction(
    node: NodeView,
    device: Device,
    needed_bytes: int,
    now: float,
    strategy: Strategy,
    min_resident_s: float,
) -> list[str] | None:
    """Model ids to unload from ``device`` so ``needed_bytes`` fit; [] if they fit already.

    None when even unloading every candidate would not free enough.
    """
    free = node.free_bytes(device)
    plan: list[str] = []
    candidates = [m for m in node.on_device(device.id) if m.movable(now, min_resident_s)]
    for model in eviction_order(candidates, strategy):
        if free >= needed_bytes:
            break
        plan.append(model.model_id)
        free += model.occupancy
    return plan if free >= needed_bytes else None
