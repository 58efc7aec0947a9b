"""Model lifecycle: load, unload, and leasing a resident model to a request.

``ModelManager`` is the one owner of model state (the ``Slot`` table) and of admission (the
``max_concurrency`` semaphore, with at most ``queue_depth`` requests waiting for it: past that a
request gets 429 at once instead of queueing without bound). Every mutation happens on the
event loop without an ``await`` between check and update, so loads of one id are single-flight
without locks: the first load inserts a slot with its load task, later ones find it and await
the same task.

States: loading -> loaded -> unloading -> (removed); loading -> failed. A failed slot stays
visible in /status with its error until a new load retries it or an unload clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import msgspec

from cortex.config import GB, NeuronSection
from cortex.errors import (
    Conflict,
    CortexError,
    InsufficientMemory,
    InvalidRequest,
    ModelNotLoaded,
    NoHarness,
    Overloaded,
    Unavailable,
)
from cortex.neuron.gpus import Devices
from cortex.neuron.harness import Harness, HarnessInfo, LoadedModel, LoadOptions
from cortex.neuron.slot import Lease, Slot
from cortex.neuron.sources import resolve_source
from cortex.neuron.stores import Stores
from cortex.protocol.neuron import (
    DeviceStatus,
    LoadProgress,
    LoadRequest,
    LoadResponse,
    ModelStatus,
    UnloadRequest,
    UnloadResponse,
)
from cortex.tasks import Task, check_task

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1.0  # told to a request refused past queue_depth


class ModelManager:
    def __init__(
        self, config: NeuronSection, harnesses: Mapping[str, Harness], devices: Devices
    ) -> None:
        self._config = config
        self.heartbeat_s = config.heartbeat_s  # SSE keep-alive cadence while a stream is silent
        self._harnesses = harnesses
        self._devices = devices
        self.stores = Stores.from_config(config)  # neuron.toml discover: models found on disk
        self._slots: dict[str, Slot] = {}
        self._admission = asyncio.Semaphore(config.max_concurrency)
        self.running = 0  # sequences admitted and not yet finished, all models
        self.on_load: list[Callable[[str, bool, float], None]] = []  # (model, ok, seconds)

    # ------------------------------------------------------------------ queries

    def devices(self) -> list[DeviceStatus]:
        cpu = sum(s.committed_bytes for s in self._slots.values() if s.device == "cpu")
        return self._devices.snapshot(cpu)

    def models(self) -> list[ModelStatus]:
        return [slot.status() for slot in self._slots.values()]

    def resident(self) -> list[Slot]:
        return [s for s in self._slots.values() if s.state == "loaded"]

    def model(self, model_id: str) -> LoadedModel:
        """The resident model; raises ModelNotLoaded (404)."""
        slot = self._slots.get(model_id)
        if slot is None or slot.state != "loaded" or slot.model is None:
            raise ModelNotLoaded(f"The model '{model_id}' does not exist or is not loaded.")
        return slot.model

    # ------------------------------------------------------------------ leasing

    @contextlib.asynccontextmanager
    async def lease(self, model_id: str, task: Task = "generate") -> AsyncIterator[Lease]:
        """Hold ``model_id`` for one request, queued until ``admit`` gives it a place.

        Raises at once ModelNotLoaded (404) when the model is absent, InvalidRequest (400) when
        it was loaded for another ``task``, and Overloaded (429) when ``queue_depth`` requests
        already wait for a place; Unavailable when an unload evicts the request. A client
        hang-up (task cancellation) passes through untouched.
        """
        model = self.model(model_id)
        check_task(model_id, model.task, task)
        # Leases not yet running, planning ones included: they take the free places first.
        waiting = sum(len(slot.leases) for slot in self._slots.values()) - self.running
        free = self._config.max_concurrency - self.running
        if waiting >= free + self._config.queue_depth:
            raise Overloaded(
                f"{waiting} requests already wait for a place on this neuron (queue_depth)",
                retry_after_s=RETRY_AFTER_S,
            )
        slot = self._slots[model_id]
        lease = Lease(slot, model, asyncio.current_task())
        slot.add(lease)
        try:
            yield lease
        except asyncio.CancelledError:
            error = lease.eviction_error()
            if error is None:
                raise
            raise error from None
        finally:
            if lease.running:
                self.running -= 1
                self._admission.release()
            slot.remove(lease)

    async def admit(
        self, lease: Lease, heartbeat: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Wait for a ``max_concurrency`` place; raises ModelNotLoaded if the model was unloaded
        meanwhile. ``heartbeat`` (if given) is awaited every ``heartbeat_s`` while waiting, so a
        stream whose headers went out shows it is alive."""
        await self._acquire(heartbeat)
        if lease.slot.state != "loaded":
            self._admission.release()
            raise ModelNotLoaded(f"The model '{lease.slot.request.model}' was unloaded.")
        lease.running = True
        self.running += 1

    async def _acquire(self, heartbeat: Callable[[], Awaitable[None]] | None) -> None:
        if heartbeat is None or not self._admission.locked():
            await self._admission.acquire()
            return
        # Semaphore.acquire gives a place back itself when cancelled after being woken.
        acquire = asyncio.ensure_future(self._admission.acquire())
        try:
            while not (await asyncio.wait({acquire}, timeout=self._config.heartbeat_s))[0]:
                await heartbeat()
        except BaseException:
            if acquire.done() and not acquire.cancelled():
                self._admission.release()
            acquire.cancel()
            raise

    # ------------------------------------------------------------------ load

    async def load(self, request: LoadRequest) -> LoadResponse:
        """Idempotent and single-flight; raises Conflict, InsufficientMemory, InvalidRequest,
        NoHarness, or the load's own error. A caller that goes away does not stop the load.
        A load that arrives while the model is unloading waits for the unload, then loads
        afresh: an Ollama ``keep_alive: 0`` followed at once by a request must not fail."""
        slot = self._slots.get(request.model)
        while slot is not None and slot.state == "unloading":
            assert slot.unloading is not None
            with contextlib.suppress(Exception):
                await asyncio.shield(slot.unloading)
            if self._slots.get(request.model) is slot:  # the harness failed to free it
                raise Unavailable(f"unloading {request.model!r} failed; see the neuron's log")
            slot = self._slots.get(request.model)
        if slot is not None and slot.state == "failed":
            del self._slots[request.model]
            slot = None
        if slot is None:
            slot = self._begin_load(request)
            assert slot.loading is not None
            await asyncio.shield(slot.loading)
            return LoadResponse(model=slot.status())
        if not slot.request.same_spec(request):
            raise Conflict(
                f"model {request.model!r} is {slot.state} with a different spec "
                f"(source {slot.request.source!r}, quantization {slot.request.quantization}); "
                "unload it first"
            )
        if slot.state == "loading" and slot.loading is not None:
            await asyncio.shield(slot.loading)
        # Sampling defaults are no part of the weights: the latest models.toml values apply.
        slot.request = msgspec.structs.replace(slot.request, sampling=request.sampling)
        return LoadResponse(model=slot.status(), already_loaded=True)

    def _begin_load(self, request: LoadRequest) -> Slot:
        """Validate and reserve synchronously (no await: single-flight), then start the load."""
        harness = self._harnesses.get(request.harness)
        if harness is None:
            have = ", ".join(sorted(self._harnesses)) or "none"
            raise NoHarness(f"no harness {request.harness!r} on this neuron (have: {have})")
        info = harness.info()
        if request.quantization not in info.quantizations:
            raise InvalidRequest(
                f"harness {info.name!r} does not support quantization {request.quantization!r} "
                f"(supports: {', '.join(info.quantizations)})",
                param="quantization",
            )
        if request.compiled_decode and not info.compiled_decode:
            raise InvalidRequest(
                f"harness {info.name!r} has no compiled decode; remove compiled_decode from "
                f"the models.toml entry of {request.model}",
                param="compiled_decode",
            )
        if request.sampling.repetition_penalty not in (None, 1.0) and not info.sampling.penalties:
            raise InvalidRequest(
                f"harness {info.name!r} has no penalties; remove repetition_penalty from the "
                f"[models.sampling] of {request.model}",
                param="sampling.repetition_penalty",
            )
        path = resolve_source(
            self.stores.locate(request.source),
            [*self._config.model_roots, *self.stores.roots],
            allow_hub_download=self._config.allow_hub_download,
        )
        device = self._pick_device(request.device, info)
        free = device.free_bytes - self._reserved_unmeasured(device)
        need = max(int(request.vram_gb * GB), harness.estimate_bytes(request, path))
        if need > free:
            raise InsufficientMemory(
                f"model {request.model!r} needs {need / GB:.2f} GB but {device.id} has "
                f"{max(free, 0) / GB:.2f} GB free"
            )
        slot = Slot(request, harness.name, device.id, need, info.vision, info.sampling)
        self._slots[request.model] = slot
        options = LoadOptions(
            allow_hub_download=self._config.allow_hub_download,
            torch_threads=self._config.torch_threads,
            max_concurrency=self._config.max_concurrency,
            memory_budget_bytes=max(free, 0),
            max_batch_tokens=self._config.max_batch_tokens,
            kv_cache_share=self._config.kv_cache_share,
        )
        slot.loading = asyncio.create_task(self._load(slot, harness, path, options))
        slot.loading.add_done_callback(_consume_error)
        return slot

    def _pick_device(self, wanted: str | None, info: HarnessInfo) -> DeviceStatus:
        devices = self.devices()
        if wanted is not None:
            for device in devices:
                if device.id == wanted and device.kind in info.device_kinds:
                    return device
            have = ", ".join(d.id for d in devices if d.kind in info.device_kinds) or "none"
            raise InvalidRequest(
                f"no device {wanted!r} usable by harness {info.name!r} here (have: {have})",
                param="device",
            )
        usable = [d for d in devices if d.kind in info.device_kinds]
        if not usable:
            raise Unavailable(
                f"harness {info.name!r} runs on {', '.join(info.device_kinds)}; this neuron has "
                f"{', '.join(d.id for d in devices)}"
            )
        return max(usable, key=lambda d: d.free_bytes - self._reserved_unmeasured(d))

    def _reserved_unmeasured(self, device: DeviceStatus) -> int:
        """GPU free memory from NVML misses loads still in progress; the cpu budget does not."""
        if device.kind == "cpu":
            return 0
        return sum(
            s.reserved
            for s in self._slots.values()
            if s.device == device.id and s.state == "loading"
        )

    async def _load(self, slot: Slot, harness: Harness, path: str, options: LoadOptions) -> None:
        model_id = slot.request.model
        started = time.monotonic()
        stage = ""

        def progress(fraction: float, what: str) -> None:  # called from the loading thread
            nonlocal stage
            slot.progress = LoadProgress(fraction=min(max(fraction, 0.0), 1.0), stage=what)
            if what != stage:
                stage = what
                log.info("loading %s: %s (%.0f%%)", model_id, what, fraction * 100)

        log.info("loading %s from %s with %s on %s", model_id, path, harness.name, slot.device)
        try:
            model = await asyncio.to_thread(
                harness.load, slot.request, path, slot.device, options, progress
            )
        except BaseException as exc:
            slot.move("failed", error=_describe(exc))
            log.error("loading %s failed: %s", model_id, slot.error)
            self._load_ended(model_id, False, started)
            if isinstance(exc, CortexError | asyncio.CancelledError):
                raise
            raise Unavailable(f"loading {model_id!r} failed: {slot.error}") from exc
        if model.task != slot.request.task:
            await asyncio.to_thread(model.unload)
            slot.move(
                "failed",
                error=f"harness {harness.name!r} cannot load {model_id} for "
                f"task {slot.request.task!r}",
            )
            self._load_ended(model_id, False, started)
            raise InvalidRequest(slot.error or "", param="task")
        slot.model = model
        slot.move("loaded")
        self._load_ended(model_id, True, started)
        log.info(
            "loaded %s on %s: %.2f GB in %.1f s",
            model_id,
            model.device,
            model.bytes_used / GB,
            time.monotonic() - started,
        )

    def _load_ended(self, model_id: str, ok: bool, started: float) -> None:
        for callback in self.on_load:
            callback(model_id, ok, time.monotonic() - started)

    # ------------------------------------------------------------------ unload

    async def unload(self, request: UnloadRequest) -> UnloadResponse:
        """Drain, evict what is left, free. Waits for a load in progress first; concurrent
        unloads share one. Raises ModelNotLoaded (404) when the id is unknown."""
        slot = self._slots.get(request.model)
        if slot is None:
            raise ModelNotLoaded(f"The model '{request.model}' is not on this neuron.")
        if slot.state == "loading" and slot.loading is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(slot.loading)
        if slot.state == "failed":
            self._slots.pop(request.model, None)
            return UnloadResponse(model=request.model)
        if slot.unloading is None:
            drain = self._config.unload_drain_s if request.drain_s is None else request.drain_s
            slot.move("unloading")
            slot.unloading = asyncio.create_task(self._unload(slot, drain))
        return await asyncio.shield(slot.unloading)

    async def _unload(self, slot: Slot, drain_s: float) -> UnloadResponse:
        model_id = slot.request.model
        cancelled = 0
        try:
            if slot.leases:
                await asyncio.wait_for(slot.idle.wait(), drain_s)
        except TimeoutError:
            cancelled = len(slot.leases)
            log.warning(
                "unloading %s: cancelling %d request(s) after %.1f s", model_id, cancelled, drain_s
            )
            for lease in list(slot.leases):
                lease.evict()
            await slot.idle.wait()
        freed = slot.committed_bytes
        if slot.model is not None:
            try:
                await asyncio.to_thread(slot.model.unload)
            except Exception:
                log.exception("unloading %s failed; it stays listed as unloading", model_id)
                raise
        del self._slots[model_id]
        log.info("unloaded %s: freed %.2f GB", model_id, freed / GB)
        return UnloadResponse(model=model_id, cancelled=cancelled, freed_bytes=freed)

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self) -> None:
        """Stop everything: wait out loads in progress, then unload every model at once."""
        loads = [s.loading for s in self._slots.values() if s.loading and not s.loading.done()]
        await asyncio.gather(*loads, return_exceptions=True)
        ids = list(self._slots)
        await asyncio.gather(
            *(self.unload(UnloadRequest(model=i, drain_s=0)) for i in ids), return_exceptions=True
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CortexError):
        return exc.message
    if isinstance(exc, asyncio.CancelledError):
        return "load cancelled"
    return f"{type(exc).__name__}: {exc}"


def _consume_error(task: asyncio.Task[Any]) -> None:
    """The load's error reaches its callers through shield(); if all of them went away, it is
    already logged, so mark it retrieved instead of warning at garbage collection."""
    if not task.cancelled():
        task.exception()
