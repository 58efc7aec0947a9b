"""A small language for fleet snapshots, shared by the placement tests (sizes in GB, times
relative to ``NOW``)."""

from __future__ import annotations

from typing import Any

import msgspec

from cortex.config import GB, ModelEntry
from cortex.gateway.snapshot import Device, FleetView, NodeHealth, NodeView, Resident
from cortex.protocol.neuron import ModelState

NOW = 100_000.0
MIN_RESIDENT_S = 30.0


def gb(x: float) -> int:
    return round(x * GB)


def model(
    model_id: str,
    vram_gb: float = 0.0,
    *,
    device: str = "cuda:0",
    state: ModelState = "loaded",
    measured_gb: float = 0.0,
    idle_s: float | None = 600.0,
    age_s: float | None = 3600.0,
    in_flight: int = 0,
    queued: int = 0,
    pinned: bool = False,
    priority: int = 0,
    nodes: tuple[str, ...] = (),
    context_length: int = 0,
) -> Resident:
    """A copy of ``model_id``; ``node()`` fills in where it lives."""
    return Resident(
        model_id=model_id,
        node="",
        device=device,
        state=state,
        measured_bytes=gb(measured_gb),
        declared_bytes=gb(vram_gb),
        context_length=context_length,
        loaded_at=None if age_s is None else NOW - age_s,
        last_used=None if idle_s is None else NOW - idle_s,
        in_flight=in_flight,
        queued=queued,
        pinned=pinned,
        priority=priority,
        allowed_nodes=nodes,
    )


def node(
    name: str,
    *models: Resident,
    gpus: tuple[float, ...] = (24.0,),
    cpu_gb: float | None = None,
    foreign_gb: float = 0.0,
    health: NodeHealth = "up",
    in_flight: int = 0,
) -> NodeView:
    """A node with GPUs cuda:0.. of the given sizes (each ``foreign_gb`` used by others)."""
    devices = [
        Device(id=f"cuda:{i}", kind="cuda", total_bytes=gb(g), foreign_bytes=gb(foreign_gb))
        for i, g in enumerate(gpus)
    ]
    if cpu_gb is not None:
        devices.append(Device(id="cpu", kind="cpu", total_bytes=gb(cpu_gb)))
    return NodeView(
        name=name,
        health=health,
        in_flight=in_flight,
        devices=tuple(devices),
        models=tuple(msgspec.structs.replace(m, node=name) for m in models),
    )


def fleet(*nodes: NodeView) -> FleetView:
    return FleetView(nodes=tuple(sorted(nodes, key=lambda n: n.name)))


def entry(model_id: str, vram_gb: float = 0.0, **fields: Any) -> ModelEntry:
    return ModelEntry(id=model_id, source=f"/models/{model_id}", vram_gb=vram_gb, **fields)
