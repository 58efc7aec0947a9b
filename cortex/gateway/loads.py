"""Carries out the router's decisions: waits, single-flight loads, evictions and defrag moves.

The policy is pure (router.py, evictor.py, defrag.py); this module is the effects side. Per model
one ``Gate`` holds the requests waiting for it (bounded by ``queue_depth``, each with a
``queue_wait_s`` deadline) and at most one load task, so twenty simultaneous requests for a cold
model cause exactly one load. A load that nobody waits for any more is not started, and a load
that finishes after its last waiter left is unloaded again (unless pinned or asked by an admin).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from cortex.config import CortexConfig, ModelEntry
from cortex.errors import (
    CortexError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unavailable,
)
from cortex.gateway import idle
from cortex.gateway.defrag import plan_defrag
from cortex.gateway.fleet import Claim, Fleet
from cortex.gateway.neuron_client import NeuronUnreachable
from cortex.gateway.router import Impossible, Load, Route, Wait, allowed_up_nodes, choose
from cortex.gateway.settings import Live
from cortex.gateway.snapshot import FleetView
from cortex.protocol.neuron import LoadRequest, UnloadRequest

log = logging.getLogger("cortex.gateway.loads")

UNPLACEABLE_MEMORY_S = 600.0  # how long a failed placement keeps a model on defrag's wish list
IDLE_CHECK_S = 1.0  # how often idle TTLs are checked: a TTL fires at most this late
_encoder = msgspec.json.Encoder()


@dataclass
class Gate:
    waiting: int = 0
    load: asyncio.Task[None] | None = None
    keep: bool = False  # the current load was asked by an admin or a pin: never undo it


@dataclass
class LoadStats:
    """Counters the status page and metrics read; written only here."""

    evictions: int = 0
    eviction_cycles: int = 0


def _without(fleet: FleetView, exclude: Collection[str], only: str | None) -> FleetView:
    """The view with some nodes treated as down (retry elsewhere, or an admin's --node)."""
    if not exclude and only is None:
        return fleet
    nodes = tuple(
        n
        if n.name not in exclude and (only is None or n.name == only)
        else msgspec.structs.replace(n, health="down")
        for n in fleet.nodes
    )
    return FleetView(nodes=nodes)


class Loader:
    def __init__(self, live: Live, fleet: Fleet, session: aiohttp.ClientSession) -> None:
        """``live``: the running settings, read per use; the catalogue is the fleet's."""
        self.live = live
        self.fleet = fleet
        self.catalogue = fleet.catalogue
        self.session = session
        self.stats = LoadStats()
        self.gates: dict[str, Gate] = {}
        self._unplaceable: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.observers: list[LoadObserver] = []

    @property
    def config(self) -> CortexConfig:
        """The running cortex.toml (``Live``), never a copy."""
        return self.live.config

    # ------------------------------------------------------------------ requests

    async def route(
        self,
        entry: ModelEntry,
        *,
        exclude: Collection[str] = (),
        node: str | None = None,
        keep: bool = False,
        session: str | None = None,
    ) -> str:
        """A node where ``entry`` is loaded, loading it (and evicting) when needed;
        ``session``: the request's affinity key (router.choose).

        Raises Overloaded when the model's queue is full, Unavailable when it cannot be placed
        or did not load before the deadline (both carry Retry-After).
        """
        gate = self.gates.setdefault(entry.id, Gate())
        gw = self.config.gateway
        if gate.waiting >= gw.queue_depth:
            raise Overloaded(
                f"{entry.id}: {gate.waiting} requests already waiting (queue_depth)",
                retry_after_s=max(1.0, gw.poll_interval_s),
            )
        deadline = time.monotonic() + gw.queue_wait_s
        gate.waiting += 1
        queued: Claim | None = None
        try:
            while True:
                view = _without(self.fleet.view(), exclude, node)
                decision = choose(
                    view,
                    entry,
                    time.time(),
                    self.config.eviction.strategy,
                    self.config.eviction.min_resident_s,
                    session,
                )
                if isinstance(decision, Route):
                    return decision.node
                if isinstance(decision, Impossible):
                    if decision.retry_after_s is None:
                        raise ModelNotFound(decision.reason)
                    self._unplaceable[entry.id] = time.monotonic()
                    raise Unavailable(decision.reason, retry_after_s=decision.retry_after_s)
                queued = self._queue_on(entry.id, decision.node, queued)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(
                        f"{entry.id} is not ready after {gw.queue_wait_s:.0f}s (queue_wait_s)",
                        retry_after_s=10.0,
                    )
                if isinstance(decision, Wait):
                    await self.fleet.changed(min(remaining, gw.poll_interval_s))
                    continue
                await self._join_load(entry, decision, gate, keep, remaining)
        finally:
            gate.waiting -= 1
            if queued is not None:
                queued.release()

    def _queue_on(self, model: str, node: str, previous: Claim | None) -> Claim:
        """Count this request as queued on ``node`` so the evictor leaves the model alone."""
        if previous is not None:
            if previous.node == node:
                return previous
            previous.release()
        return self.fleet.claim(model, node, "queued")

    async def _join_load(
        self, entry: ModelEntry, decision: Load, gate: Gate, keep: bool, remaining: float
    ) -> None:
        if gate.load is None or gate.load.done():
            gate.keep = keep
            gate.load = asyncio.create_task(self._load(entry, decision, gate))
        else:
            gate.keep = gate.keep or keep
        try:
            await asyncio.wait_for(asyncio.shield(gate.load), remaining)
        except TimeoutError:
            return  # the loop reports the deadline

    # ------------------------------------------------------------------ effects

    async def _load(self, entry: ModelEntry, decision: Load, gate: Gate) -> None:
        if gate.waiting == 0 and not gate.keep:
            return  # everyone left before it started
        if decision.evict:
            await self._evict(decision.evict)
        await self._place(entry, decision.node, decision.device)
        if gate.waiting or gate.keep:
            return
        # Pins as of now, runtime ones included: `cortex pin` may have come after the request.
        if self.catalogue.pinned(entry.id):
            log.info("keeping %s although every waiting client left: it is pinned", entry.id)
        else:
            log.info("unloading %s again: every waiting client left", entry.id)
            await self.unload(entry.id, decision.node)

    async def _place(self, entry: ModelEntry, node: str, device: str) -> None:
        """Load ``entry`` on ``node``: reserved in the fleet view meanwhile, timed, observed."""
        started = time.monotonic()
        try:
            with self.fleet.loading(entry.id, node, device):
                await self._post_load(entry, node, device)
        except CortexError as exc:
            for observer in self.observers:
                observer.load_failed(entry.id, node)
            message = f"loading {entry.id} on {node} failed: {exc.message}"
            if isinstance(exc, InvalidRequest):
                # A bad source or option: retrying cannot help, so no "retry later" 503 that
                # SDKs would repeat (and the neuron load again) three times.
                raise InvalidRequest(message, param=exc.param, code=exc.code) from None
            raise Unavailable(message) from None
        finally:
            await self.fleet.refresh_now(node)
        seconds = time.monotonic() - started
        for observer in self.observers:
            observer.loaded(entry.id, node, seconds)
        log.info("loaded %s on %s/%s in %.1fs", entry.id, node, device, seconds)

    async def _evict(self, plan: tuple[tuple[str, str], ...]) -> None:
        for node, model in plan:
            log.info("evicting %s from %s", model, node)
            await self.unload(model, node)
            self.stats.evictions += 1
            for observer in self.observers:
                observer.evicted(model, node)
        self.stats.eviction_cycles += 1
        every = self.config.eviction.defrag_after_cycles
        if every and self.stats.eviction_cycles % every == 0:
            self.spawn(self.defrag())

    async def _post_load(self, entry: ModelEntry, node: str, device: str) -> None:
        body = LoadRequest.from_entry(entry, device)
        await self._call(
            node, "/models/load", _encoder.encode(body), self.config.gateway.load_timeout_s
        )

    async def unload(self, model: str, node: str) -> None:
        """Unload ``model`` from ``node``; a client's TTL for it ends when no copy is left."""
        try:
            body = _encoder.encode(UnloadRequest(model=model))
            await self._call(node, "/models/unload", body, self.config.gateway.load_timeout_s)
        finally:
            await self.fleet.refresh_now(node)
            if next(self.fleet.view().holders(model), None) is None:
                self.catalogue.set_ttl(model, None)

    async def _call(self, node: str, path: str, body: bytes, timeout_s: float) -> None:
        state = self.fleet.neurons.get(node)
        if state is None:  # removed from cortex.toml by a reload meanwhile
            raise Unavailable(f"{node} is no longer configured")
        try:
            await self.fleet.client.post(state.ref, path, body, timeout_s)
        except NeuronUnreachable as exc:
            self.fleet.mark_suspect(node, str(exc))
            raise Unavailable(f"{node} did not answer {path}") from None  # cause: logged

    # ------------------------------------------------------------------ pins and defrag

    def ensure_pinned(self, node: str | None = None) -> None:
        """Load every pinned model that is resident nowhere (at start-up, when a node returns)."""
        view = self.fleet.view()
        for entry in self.catalogue.view().models:
            if not entry.pinned or next(view.holders(entry.id), None) is not None:
                continue
            if node is not None and entry.nodes and node not in entry.nodes:
                continue
            if not allowed_up_nodes(view, entry):
                continue  # no warning at start-up: on_node_up calls again when one comes up
            self.spawn(self._load_pinned(entry))

    def node_down(self, node: str) -> None:
        """A node went down: its pinned models are re-placed now, not when a request pays."""
        self.ensure_pinned()

    async def _load_pinned(self, entry: ModelEntry) -> None:
        try:
            where = await self.route(entry, keep=True)
            log.info("pinned model %s resident on %s", entry.id, where)
        except CortexError as exc:
            log.warning("pinned model %s not loaded: %s", entry.id, exc.message)

    async def defrag(self) -> None:
        now = time.monotonic()
        self._unplaceable = {
            m: t for m, t in self._unplaceable.items() if now - t < UNPLACEABLE_MEMORY_S
        }
        catalogue = self.catalogue.view().by_id
        wanted = [catalogue[m] for m in self._unplaceable if m in catalogue]
        moves = plan_defrag(
            self.fleet.view(), wanted, time.time(), self.config.eviction.min_resident_s
        )
        for move in moves:
            entry = catalogue.get(move.model_id)
            if entry is None:
                continue
            log.info("defrag: moving %s from %s to %s", move.model_id, move.from_node, move.to_node)
            try:
                await self.unload(move.model_id, move.from_node)
                await self._place(entry, move.to_node, move.to_device)
            except CortexError as exc:
                log.warning("defrag move of %s failed: %s", move.model_id, exc.message)

    # ------------------------------------------------------------------ idle TTL

    async def reap_idle(self) -> None:
        """Unload copies idle past their TTL (idle.py decides); runs for the gateway's life."""
        while True:
            await asyncio.sleep(IDLE_CHECK_S)
            default = self.config.eviction.default_ttl_s  # re-read: SIGHUP may change it
            for copy in idle.expired(
                self.fleet.view(), self.catalogue.view().by_id, default, time.time()
            ):
                log.info("%s idle on %s past its ttl: unloading", copy.model_id, copy.node)
                try:
                    await self.unload(copy.model_id, copy.node)
                except CortexError as exc:
                    log.warning("idle unload of %s failed: %s", copy.model_id, exc.message)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run in the background, keeping a reference so the task is not garbage-collected."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        tasks = [*self._background, *(g.load for g in self.gates.values() if g.load)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class LoadObserver:
    """Hooks for metrics; the default does nothing."""

    def loaded(self, model: str, node: str, seconds: float) -> None:
        """A load finished."""

    def load_failed(self, model: str, node: str) -> None:
        """A load failed."""

    def evicted(self, model: str, node: str) -> None:
        """A model was evicted to make room."""
