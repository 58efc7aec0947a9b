"""One model's entry on the neuron (``Slot``) and one request's claim on it (``Lease``).

Both are plain mutable records owned by ``lifecycle.ModelManager`` and touched only on the event
loop; the one exception is ``Slot.progress``, which the loading thread replaces wholesale (an
atomic attribute store) and the loop only reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Final

from cortex.config import NO_SAMPLING_DEFAULTS, SamplingDefaults
from cortex.errors import Unavailable
from cortex.neuron.constraints import SamplingFeatures
from cortex.neuron.harness import LoadedModel
from cortex.protocol.neuron import (
    LoadProgress,
    LoadRequest,
    ModelState,
    ModelStatus,
    UnloadResponse,
)

NO_SAMPLING_FEATURES = SamplingFeatures()


class Lease:
    """A request using a model: queued until admitted, then running.

    Unload evicts a lease by setting ``evicted`` and cancelling its task; the lease context turns
    that cancellation into an error for the client (see ModelManager.lease).
    """

    __slots__ = ("evicted", "model", "running", "slot", "task")

    def __init__(self, slot: Slot, model: LoadedModel, task: asyncio.Task[Any] | None) -> None:
        self.slot = slot
        self.model = model
        self.task = task
        self.running = False
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True
        if self.task is not None:
            self.task.cancel("model unloaded")

    def eviction_error(self) -> Unavailable | None:
        """Called on CancelledError: None for a real cancellation (re-raise it); for an
        eviction, un-cancel the task and return the error to report instead."""
        if not self.evicted or self.task is None:
            return None
        self.evicted = False
        self.task.uncancel()
        return Unavailable(
            f"The model '{self.slot.request.model}' was unloaded during the request."
        )


# Every state a slot may move to from each state (llama-swap's isValidTransition). A failed
# slot is replaced by the next load, an unloading one is dropped from the table when done:
# neither moves again.
TRANSITIONS: Final[Mapping[ModelState, frozenset[ModelState]]] = {
    "loading": frozenset({"loaded", "failed"}),
    "loaded": frozenset({"unloading"}),
    "failed": frozenset(),
    "unloading": frozenset(),
}


class Slot:
    def __init__(
        self,
        request: LoadRequest,
        harness: str,
        device: str,
        reserved: int,
        vision: bool,
        sampling: SamplingFeatures = NO_SAMPLING_FEATURES,
    ) -> None:
        self.request = request
        self.harness = harness
        self.vision = vision  # the harness takes image parts
        self.sampling = sampling  # the optional sampling fields the harness honours
        self.device = device
        self.reserved = reserved  # bytes promised to this model before it measured itself
        self.state: ModelState = "loading"
        self.model: LoadedModel | None = None
        self.progress: LoadProgress | None = LoadProgress(fraction=0.0, stage="queued")
        self.error: str | None = None
        self.loaded_at: float | None = None
        self.last_used: float | None = None
        self.leases: set[Lease] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.loading: asyncio.Task[None] | None = None
        self.unloading: asyncio.Task[UnloadResponse] | None = None

    def move(self, to: ModelState, error: str | None = None) -> None:
        """The one way a slot changes state; a move outside ``TRANSITIONS`` is a bug, raised."""
        if to not in TRANSITIONS[self.state]:
            raise RuntimeError(f"{self.request.model}: no move from {self.state} to {to}")
        self.state = to
        self.error = error
        if to != "loading":
            self.progress = None
        if to == "loaded":
            self.loaded_at = self.last_used = time.time()

    @property
    def committed_bytes(self) -> int:
        """What the device must keep for this model (the reservation until it is measured)."""
        if self.state == "failed":
            return 0
        return self.model.bytes_used if self.model is not None else self.reserved

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        """What requests get for omitted sampling fields: models.toml's ``[models.sampling]``
        over the model's own (its generation_config.json, as the harness read it)."""
        own = self.model.sampling_defaults if self.model is not None else NO_SAMPLING_DEFAULTS
        return self.request.sampling.over(own)

    def add(self, lease: Lease) -> None:
        self.leases.add(lease)
        self.idle.clear()

    def remove(self, lease: Lease) -> None:
        self.leases.discard(lease)
        self.last_used = time.time()
        if not self.leases:
            self.idle.set()

    def status(self) -> ModelStatus:
        running = sum(1 for lease in self.leases if lease.running)
        model = self.model
        return ModelStatus(
            id=self.request.model,
            state=self.state,
            harness=self.harness,
            device=self.device,
            source=self.request.source,
            quantization=self.request.quantization,
            bytes=model.bytes_used if model is not None else 0,
            context_length=model.context_length if model is not None else 0,
            loaded_at=self.loaded_at,
            last_used=self.last_used,
            in_flight=running,
            queued=len(self.leases) - running,
            error=self.error,
            progress=self.progress if self.state == "loading" else None,
            sampling=self.sampling_defaults if model is not None else None,
        )
