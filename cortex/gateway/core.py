"""The gateway's request core, shared by every dialect: resolve, route, open upstream, account.

``Gateway`` owns nothing but wiring: the running settings (``Live``), the fleet (state), the
loader (effects) and the catalogue (what models exist). Dialect modules (chat.py,
dialects/*/routes.py) decode their request, call ``open`` for an upstream answer whose status
arrived, and relay it in their own shape.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import msgspec
from aiohttp import web
from yarl import URL

from cortex.config import CortexConfig, ModelEntry, NeuronRef, UpstreamRef
from cortex.errors import ContextLengthExceeded, CortexError, ModelNotFound, Unavailable
from cortex.gateway.exchange import Exchange
from cortex.gateway.fleet import Fleet, upstream_base, upstream_headers
from cortex.gateway.history import Finished, History
from cortex.gateway.loads import Loader
from cortex.gateway.neuron_client import neuron_headers
from cortex.gateway.proxy import NodeDown, Target, UpstreamResponse, open_upstream
from cortex.gateway.router import pick
from cortex.gateway.settings import Live
from cortex.tasks import Task, check_task

log = logging.getLogger("cortex.gateway")
request_log = logging.getLogger("cortex.request")

MAX_ATTEMPTS = 3
_ADDRESSES = 1024  # cached (ref, path) targets; more only after many reloads
EMBEDDINGS_PATH = "/embeddings"  # the one upstream path an embed model serves


class Resolved(msgspec.Struct, frozen=True):
    """What a client's model name means: a catalogue entry, or a model an upstream serves
    (a Struct: one is made per request)."""

    model_id: str
    entry: ModelEntry | None
    upstream: bool = False  # served by [[upstreams]] (one or several replicas), not a neuron


class Gateway:
    """The request core; one per application, reached by handlers through ``GATEWAY``."""

    def __init__(
        self, live: Live, fleet: Fleet, loader: Loader, session: aiohttp.ClientSession
    ) -> None:
        self.live = live
        self.catalogue = fleet.catalogue  # the one Catalogue, shared with the fleet and loader
        self.fleet = fleet
        self.loader = loader
        self.session = session
        self.history = History()
        self.observers: list[ExchangeObserver] = []
        self._addresses: dict[tuple[NeuronRef | UpstreamRef, str], Target] = {}

    @property
    def config(self) -> CortexConfig:
        """The running cortex.toml (``Live``), never a copy."""
        return self.live.settings.config

    def resolve(self, name: str) -> Resolved:
        entry = self.catalogue.resolve(name)
        if entry is not None:
            return Resolved(entry.id, entry)
        if self.fleet.upstreams_for(name):
            return Resolved(name, None, upstream=True)
        raise ModelNotFound(f"The model '{name}' does not exist (see GET /v1/models).")

    async def open(
        self, resolved: Resolved, path: str, body: bytes, exchange: Exchange
    ) -> UpstreamResponse:
        """Route (by ``exchange.session`` when set) and send; retries on another node only while
        nothing reached the client.

        On return the upstream answered with status < 400 and ``exchange.node`` is set;
        in-flight is counted until ``finish``. A catalogue model loaded for another task than
        ``path`` serves is refused (400) before any routing or load.
        """
        exchange.model = resolved.model_id
        if resolved.entry is not None:
            wanted: Task = "embed" if path == EMBEDDINGS_PATH else "generate"
            check_task(resolved.model_id, resolved.entry.task, wanted)
        excluded: set[str] = set()
        last_error = "no attempt"
        for _ in range(MAX_ATTEMPTS):
            queued_at = time.perf_counter()
            target = await self._target(resolved, path, excluded, exchange.session)
            exchange.queue_wait_s += time.perf_counter() - queued_at
            exchange.node = target.node
            claim = exchange.claim = self.fleet.claim(resolved.model_id, target.node, "in_flight")
            exchange.upstream_sent = time.perf_counter()
            try:
                settings = self.live.settings
                timeout = settings.stream_timeout if exchange.stream else settings.timeout
                if target.is_neuron and target.node in self.fleet.neurons:
                    upstream = await self._first_byte(target, body, timeout)
                else:  # an upstream: no fleet poll to race against
                    upstream = await open_upstream(self.session, target, body, timeout)
            except (aiohttp.ClientError, TimeoutError, NodeDown) as exc:
                claim.release()
                last_error = f"{target.node} failed before the first byte"  # cause: logged
                why = f"request failed before the first byte: {exc!r}"
                if target.is_neuron:
                    self.fleet.mark_suspect(target.node, why)
                else:
                    log.warning("upstream %s: %s", target.node, why)
                excluded.add(target.node)  # nothing reached the client: try another copy
                continue
            if upstream.resp.status < 400:
                return upstream
            claim.release()
            err = await upstream.error()
            if target.is_neuron and err.code == "model_not_found":
                # Unloaded between the last poll and this request: re-read and route again.
                await self.fleet.refresh_now(target.node)
                last_error = err.message
                continue
            if isinstance(err, ContextLengthExceeded):
                err.message += self.catalogue.view().too_long_hint(resolved.model_id, err.message)
            raise err
        raise Unavailable(
            f"no node could serve {resolved.model_id}: {last_error}", retry_after_s=5.0
        )

    async def _first_byte(
        self, target: Target, body: bytes, timeout: aiohttp.ClientTimeout
    ) -> UpstreamResponse:
        """``open_upstream`` to a neuron, abandoned with NodeDown when the fleet marks it down
        first: a stalled node would otherwise hold the request for the whole timeout, though
        nothing was sent yet and another node could answer."""
        send = asyncio.ensure_future(open_upstream(self.session, target, body, timeout))
        down = asyncio.ensure_future(self.fleet.wait_down(target.node))
        try:
            await asyncio.wait((send, down), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the client left: drop the upstream request too
            send.cancel()
            if send.done() and not send.cancelled() and send.exception() is None:
                send.result().close()
            raise
        finally:
            down.cancel()
        if not send.done():
            send.cancel()  # closes the connection: the neuron, if it wakes, sees a hang-up
            raise NodeDown(f"{target.node} was marked down before it answered")
        return send.result()

    async def _target(
        self, resolved: Resolved, path: str, excluded: set[str], session: str | None
    ) -> Target:
        if resolved.upstream:
            replicas = {
                up.ref.name: up
                for up in self.fleet.upstreams_for(resolved.model_id)
                if up.ref.name not in excluded
            }
            if not replicas:
                raise Unavailable(
                    f"no upstream serving {resolved.model_id} answered", retry_after_s=5.0
                )
            if len(replicas) == 1:  # nothing to choose: no load count, no affinity hash
                (up,) = replicas.values()
            else:
                loads = [
                    (name, self.fleet.counts(resolved.model_id, name).in_flight, 0)
                    for name in replicas
                ]
                up = replicas[pick(loads, session)]
            return self._address(up.ref, path)
        assert resolved.entry is not None
        node = await self.loader.route(resolved.entry, exclude=excluded, session=session)
        return self._address(self.fleet.neurons[node].ref, path)

    def _address(self, ref: NeuronRef | UpstreamRef, path: str) -> Target:
        """Where ``path`` is on ``ref`` (URL parsed and headers built once per ref and path: a
        reload brings new refs, and so new entries)."""
        key = (ref, path)
        target = self._addresses.get(key)
        if target is None:
            if len(self._addresses) >= _ADDRESSES:
                self._addresses.clear()  # refs replaced by reloads: start over
            if isinstance(ref, UpstreamRef):
                url, auth, neuron = upstream_base(ref) + path, upstream_headers(ref), False
            else:
                url, auth, neuron = (
                    ref.endpoint.rstrip("/") + "/v1" + path,
                    neuron_headers(ref),
                    True,
                )
            headers = {"content-type": "application/json", **auth}
            target = self._addresses[key] = Target(ref.name, URL(url), headers, neuron)
        return target

    def finish(self, exchange: Exchange, error: CortexError | None = None) -> None:
        """Account for one finished exchange: counters, rates, observers, the log line."""
        exchange.finished = time.perf_counter()
        if exchange.claim is not None:
            exchange.claim.release()
        if error is not None:
            exchange.status = error.status
            exchange.error = error.message
        exchange.settle_usage()
        first = exchange.first_token
        self.history.record(
            Finished(
                at=time.time(),
                request_id=exchange.request_id,
                model=exchange.model or "-",
                node=exchange.node or "-",
                status=exchange.status,
                tokens=exchange.completion_tokens,
                ttft_s=first - exchange.started if exchange.stream and first is not None else None,
                error=exchange.error,
            )
        )
        for observer in self.observers:
            observer.finished(exchange)
        if request_log.isEnabledFor(logging.INFO):  # the fields cost more than the check
            request_log.info("request", extra={"fields": _log_fields(exchange)})


class ExchangeObserver:
    """Hook for metrics; called once per finished exchange."""

    def finished(self, exchange: Exchange) -> None:
        """Record it."""


def _log_fields(ex: Exchange) -> dict[str, object]:
    assert ex.finished is not None
    fields: dict[str, object] = {
        "id": ex.request_id,
        "dialect": ex.dialect,
        "route": ex.route,
        "model": ex.model or "-",
        "node": ex.node or "-",
        "session": ex.session or "-",
        "status": ex.status,
        "stream": ex.stream,
        "prompt_tokens": ex.prompt_tokens,
        "completion_tokens": ex.completion_tokens,
        "duration_s": round(ex.finished - ex.started, 4),
        "queue_wait_s": round(ex.queue_wait_s, 4),
    }
    if ex.first_token is not None:
        fields["ttft_s"] = round(ex.first_token - ex.started, 4)
    if ex.error:
        fields["error"] = ex.error
    return fields


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)
