"""The one owner of fleet state: neuron statuses, upstream model lists and the gateway's counts.
(What models exist, and which are pinned, is the ``Catalogue``'s; the Fleet tells it what the
neurons discovered after each poll.)

One poll loop per neuron (``GET /status`` every ``poll_interval_s``, at once after a load or an
unload via ``refresh``); a down node is probed at least every ``DOWN_PROBE_S`` so its return is
seen at once. Everything runs on the event loop,
so there are no locks: handlers read ``view()`` snapshots and bump counters synchronously.
A node that comes back is re-read, never assumed: its status replaces whatever was known.

Health: up after a good poll; suspect after one failed poll or a mid-stream failure (routing
avoids it while another node serves); down after two failed polls in a row. ``on_node_up`` and
``on_node_down`` callbacks fire on those transitions (the loader re-places pinned models).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import aiohttp
import msgspec

from cortex.config import CortexConfig, NeuronRef, UpstreamRef
from cortex.errors import CortexError
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.neuron_client import (
    HttpNeuronClient,
    NeuronClient,
    NeuronUnreachable,
)
from cortex.gateway.settings import Live
from cortex.gateway.snapshot import FleetView, Usage, fleet_from_statuses
from cortex.protocol.neuron import NeuronStatus
from cortex.protocol.openai import ModelList

log = logging.getLogger("cortex.gateway.fleet")

DOWN_PROBE_S = 2.0
_models_decoder = msgspec.json.Decoder(ModelList)


class Claim:
    """One request counted on one (model, node), in flight or queued, until ``release``.

    Release is idempotent, so every way out of a request (answer, retry elsewhere, error,
    hang-up) may call it and the count still drops exactly once. Only ``Fleet.claim`` makes one.
    """

    def __init__(self, usage: Usage, node: str, kind: Literal["in_flight", "queued"]) -> None:
        self.usage, self.node, self.kind, self.held = usage, node, kind, True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self.kind == "in_flight":
            self.usage.in_flight -= 1
            self.usage.finished += 1
            self.usage.last_used = time.time()
        else:
            self.usage.queued -= 1


@dataclass
class NeuronState:
    ref: NeuronRef
    status: NeuronStatus | None = None
    failures: int = 0
    suspect: bool = False
    error: str | None = None
    last_seen: float | None = None
    wake: asyncio.Event | None = None

    @property
    def health(self) -> str:
        if self.status is None or self.failures >= 2:
            return "down"
        return "suspect" if (self.suspect or self.failures) else "up"


@dataclass
class UpstreamState:
    ref: UpstreamRef
    models: tuple[str, ...] = ()
    up: bool = False
    error: str | None = None


def probe_delay(interval: float, down: bool) -> float:
    """Seconds to the next poll: a down node no less often than every DOWN_PROBE_S (issue:
    a back-off growing to 30 s saw a returning neuron up to 14 s late)."""
    return min(interval, DOWN_PROBE_S) if down else interval


def upstream_headers(ref: UpstreamRef) -> dict[str, str]:
    return {"authorization": f"Bearer {ref.api_key}"} if ref.api_key else {}


def upstream_base(ref: UpstreamRef) -> str:
    """Upstream endpoints may be given with or without the trailing /v1."""
    base = ref.endpoint.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


class Fleet:
    def __init__(
        self,
        live: Live,
        catalogue: Catalogue,
        session: aiohttp.ClientSession,
        client: NeuronClient | None = None,
    ) -> None:
        """``live``: the running settings, read per use; ``catalogue``: the one the gateway
        shares (the Fleet reports discovered models to it and reads its entries for ``view``).
        ``client``: how neurons are reached (default: HTTP over ``session``, which also polls
        the upstreams); tests pass an in-memory fake."""
        self.live = live
        self.catalogue = catalogue
        self._session = session
        self.client: NeuronClient = client or HttpNeuronClient(
            session, lambda: live.config.gateway.connect_timeout_s
        )
        config = live.config
        self.neurons = {ref.name: NeuronState(ref) for ref in config.neurons}
        self.upstreams = {ref.name: UpstreamState(ref) for ref in config.upstreams}
        self.usage: dict[tuple[str, str], Usage] = {}
        self._changed: asyncio.Future[None] | None = None
        self._loops: dict[str, asyncio.Task[None]] = {}  # "neuron:NAME" / "upstream:NAME"
        self.on_node_up: list[Callable[[str], None]] = []
        self.on_node_down: list[Callable[[str], None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """First poll of every node and upstream (concurrently), then the poll loops."""
        await asyncio.gather(
            *(self._poll(s) for s in self.neurons.values()),
            *(self._poll_upstream(u) for u in self.upstreams.values()),
        )
        for state in self.neurons.values():
            self._watch_neuron(state)
        for up in self.upstreams.values():
            self._watch_upstream(up)

    async def stop(self) -> None:
        tasks = list(self._loops.values())
        self._loops.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _watch_neuron(self, state: NeuronState) -> None:
        state.wake = asyncio.Event()
        name = state.ref.name
        self._loops["neuron:" + name] = asyncio.create_task(self._loop(state), name=f"poll-{name}")

    def _watch_upstream(self, up: UpstreamState) -> None:
        name = up.ref.name
        self._loops["upstream:" + name] = asyncio.create_task(
            self._upstream_loop(up), name=f"poll-upstream-{name}"
        )

    async def _unwatch(self, key: str) -> None:
        task = self._loops.pop(key, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @property
    def config(self) -> CortexConfig:
        """The running cortex.toml (``Live``), never a copy."""
        return self.live.config

    async def reconfigure(self) -> list[str]:
        """Follow a reload (SIGHUP) that swapped ``live.settings``: neurons and upstreams
        added, removed or changed, and the discovered models re-read against models.toml.

        Requests in flight hold their own target URL, so none is cut off: a removed node is
        just no longer polled or routed to, and a new one is polled once before it is offered.
        Returns what changed, for the log.
        """
        changes: list[str] = []
        config = self.config
        self._rediscover()  # before any await: models.toml's new entries win at once
        neurons = {ref.name: ref for ref in config.neurons}
        upstreams = {ref.name: ref for ref in config.upstreams}
        for name in [n for n in self.neurons if n not in neurons]:
            await self._unwatch("neuron:" + name)
            del self.neurons[name]
            changes.append(f"neuron {name} removed")
        for name in [n for n in self.upstreams if n not in upstreams]:
            await self._unwatch("upstream:" + name)
            del self.upstreams[name]
            changes.append(f"upstream {name} removed")
        for name, ref in neurons.items():
            state = self.neurons.get(name)
            if state is None:
                state = self.neurons[name] = NeuronState(ref)
                await self._poll(state)
                self._watch_neuron(state)
                changes.append(f"neuron {name} added")
            elif state.ref != ref:
                state.ref = ref
                self.refresh(name)
                changes.append(f"neuron {name} changed")
        for name, uref in upstreams.items():
            up = self.upstreams.get(name)
            if up is None or up.ref != uref:
                changes.append(f"upstream {name} {'added' if up is None else 'changed'}")
                await self._unwatch("upstream:" + name)
                up = self.upstreams[name] = UpstreamState(uref)
                await self._poll_upstream(up)
                self._watch_upstream(up)
        self._rediscover()
        self._notify()
        return changes

    # ------------------------------------------------------------------ reading

    def statuses(self) -> dict[str, NeuronStatus | None]:
        """Node name -> its last status, None while it is down."""
        return {
            name: (s.status if s.health != "down" else None) for name, s in self.neurons.items()
        }

    def view(self) -> FleetView:
        suspect = {name for name, s in self.neurons.items() if s.health == "suspect"}
        entries = self.catalogue.view().by_id
        return fleet_from_statuses(self.statuses(), entries, self.usage, suspect=suspect)

    def upstreams_for(self, model: str) -> list[UpstreamState]:
        """Every up upstream that lists ``model``: replicas that share its traffic."""
        return [up for up in self.upstreams.values() if up.up and model in up.models]

    def claim(self, model: str, node: str, kind: Literal["in_flight", "queued"]) -> Claim:
        """Count one request on (model, node) until the returned claim is released."""
        usage = self.counts(model, node)
        if kind == "in_flight":
            usage.in_flight += 1
            usage.last_used = time.time()
        else:
            usage.queued += 1
        return Claim(usage, node, kind)

    @contextlib.contextmanager
    def loading(self, model: str, node: str, device: str) -> Iterator[None]:
        """Mark ``model`` as loading onto ``node``/``device`` for the block (the Loader's
        load request): the view reserves its room until the node's own status reports it."""
        usage = self.counts(model, node)
        usage.loading_on = device
        try:
            yield
        finally:
            usage.loading_on = None

    def counts(self, model: str, node: str) -> Usage:
        """The gateway's counts for (model, node); read them, change them through ``claim``
        and ``loading``."""
        key = (model, node)
        usage = self.usage.get(key)
        if usage is None:
            usage = self.usage[key] = Usage()
        return usage

    async def wait_down(self, node: str) -> None:
        """Return once ``node`` is down and one more poll of our own still fails: a request
        waiting on it then goes elsewhere, and a blip (two slow polls on a busy host) does not
        cost it its generation."""
        state = self.neurons[node]
        while True:
            while state.health != "down":
                await self.changed(self.config.gateway.poll_interval_s)
            await self._poll(state)
            if state.health == "down":
                return

    async def changed(self, timeout: float) -> None:
        """Wait until the next status update (or ``timeout``); never raises on timeout."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._changed), timeout)

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    # ------------------------------------------------------------------ writing

    def refresh(self, node: str) -> None:
        """Poll ``node`` now (after a load, an unload or a failure)."""
        state = self.neurons.get(node)
        if state is not None and state.wake is not None:
            state.wake.set()

    async def refresh_now(self, node: str) -> None:
        """Poll ``node`` and wait for the answer (callers that act on the result)."""
        state = self.neurons.get(node)
        if state is not None:
            await self._poll(state)

    def mark_suspect(self, node: str, why: str) -> None:
        state = self.neurons.get(node)
        if state is not None:
            state.suspect = True
            state.error = why
            log.warning("node %s suspect: %s", node, why)
            self.refresh(node)
            self._notify()

    # ------------------------------------------------------------------ polling

    async def _loop(self, state: NeuronState) -> None:
        assert state.wake is not None
        while True:
            delay = probe_delay(self.config.gateway.poll_interval_s, state.health == "down")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), delay)
            state.wake.clear()
            await self._poll(state)

    async def _poll(self, state: NeuronState) -> None:
        ref = state.ref
        was = state.health
        # What had ended when the poll left: the status counts none of those as in flight.
        ended = {key: u.finished for key, u in self.usage.items() if key[1] == ref.name}
        try:
            status = await self.client.status(
                ref, max(5.0, self.config.gateway.poll_interval_s * 2)
            )
        except (NeuronUnreachable, CortexError) as exc:
            state.failures += 1
            state.error = str(exc) or type(exc).__name__
            if state.health != was:
                log.warning("node %s %s: %s", ref.name, state.health, state.error)
                if state.health == "down":
                    self._rediscover()
                    for callback in self.on_node_down:
                        callback(ref.name)
            self._notify()
            return
        state.status = status
        for key, count in ended.items():
            if (usage := self.usage.get(key)) is not None:
                usage.finished_at_poll = count
        state.failures = 0
        state.suspect = False
        state.error = None
        state.last_seen = time.time()
        self._settle_loading(ref.name, status)
        self._rediscover()
        if was != "up":
            log.info("node %s up (%d models resident)", ref.name, len(status.models))
            for callback in self.on_node_up:
                callback(ref.name)
        self._notify()

    def _rediscover(self) -> None:
        """Tell the catalogue what the live nodes' stores hold (it keeps what changed)."""
        self.catalogue.discover(self.statuses())

    def _settle_loading(self, node: str, status: NeuronStatus) -> None:
        """Once the node reports a model, the gateway's own loading marker is redundant."""
        reported = {m.id for m in status.models}
        for (model, where), usage in self.usage.items():
            if where == node and usage.loading_on is not None and model in reported:
                usage.loading_on = None

    async def _upstream_loop(self, up: UpstreamState) -> None:
        while True:
            await asyncio.sleep(max(self.config.gateway.poll_interval_s, 10.0))
            await self._poll_upstream(up)

    async def _poll_upstream(self, up: UpstreamState) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with self._session.get(
                upstream_base(up.ref) + "/models", headers=upstream_headers(up.ref), timeout=timeout
            ) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"GET /v1/models answered {resp.status}")
                listing = _models_decoder.decode(await resp.read())
        except (aiohttp.ClientError, TimeoutError, RuntimeError, msgspec.DecodeError) as exc:
            if up.up:
                log.warning("upstream %s down: %s", up.ref.name, exc)
            up.up, up.error = False, str(exc) or type(exc).__name__
            return
        up.models = tuple(card.id for card in listing.data)
        up.up, up.error = True, None
