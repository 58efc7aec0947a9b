"""The gateway's Prometheus metrics: per-request observers, fleet gauges, the metrics listener.

Each application owns a ``CollectorRegistry`` (never the process-global one: tests run several
gateways in one process). Three sources feed it:

- ``RequestMetrics`` (an ExchangeObserver) records every finished exchange. It is on the hot
  path, so the labelled children for one (model, node, route, status) are resolved once and
  cached; a request then costs one dict lookup plus a few lock-protected adds.
- ``LoadMetrics`` (a LoadObserver) counts loads, load seconds and evictions.
- ``FleetCollector`` reads the fleet at scrape time (neuron health, device memory, resident
  models, in-flight and queued counts): no background loop, never stale by more than one poll.

Time definitions (all from the Exchange's perf_counter stamps):
- duration: finished - started.
- TTFT: first_token - started, streamed requests only (a non-stream answer has no first token
  the client could see; its first_token is the end of the body).
- time per output token: (upstream_done - first_token) / (completion_tokens - 1), streamed
  requests with at least two completion tokens.
- gateway overhead: (upstream_sent - started - queue_wait) + (finished - upstream_done), the
  work before the request leaves and after the upstream finished; the relay of a stream is
  interleaved with waiting for the upstream and is not counted. An exchange that never reached
  an upstream (bad request, unknown model) counts finished - started - queue_wait.
"""

from __future__ import annotations

import contextlib
import logging
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import Counter, Histogram
from prometheus_client.registry import Collector

from cortex import edge
from cortex import metric_families as families
from cortex.errors import CortexError, InvalidRequest, NotFound, openai_body
from cortex.gateway.core import ExchangeObserver, Gateway
from cortex.gateway.exchange import Exchange
from cortex.gateway.fleet import Fleet
from cortex.gateway.loads import LoadObserver
from cortex.metric_families import OVERHEAD_BUCKETS

log = logging.getLogger("cortex.gateway.metrics")

NO_LABEL = "-"  # model or node of an exchange that failed before it was routed


class _Pending:
    """One histogram child's observations since the last scrape: plain counts per bucket and
    a sum, added to the child (``flush``) when the registry is read. Recording a request is then
    a bisect and two adds, with no lock and no per-observation call into prometheus_client."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = child._upper_bounds  # ends in +Inf, as _buckets does
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def flush(self) -> None:
        # prometheus_client's own layout (its observe does the same adds one at a time):
        # _buckets[i] counts the observations <= upper_bounds[i] and > the bound before it.
        for i, n in enumerate(self._counts):
            if n:
                self._child._buckets[i].inc(n)
                self._counts[i] = 0
        if self._sum:
            self._child._sum.inc(self._sum)
            self._sum = 0.0


class _Children:
    """The labelled series one (model, node, route, status) writes to, resolved once, with the
    counts since the last scrape."""

    __slots__ = (
        "completion",
        "completion_n",
        "duration",
        "overhead",
        "prompt",
        "prompt_n",
        "queue_wait",
        "requests",
        "requests_n",
        "tpot",
        "ttft",
    )

    def __init__(self, m: RequestMetrics, model: str, node: str, route: str, status: int) -> None:
        self.requests = m.requests.labels(model, node, route, str(status))
        self.duration = _Pending(m.duration.labels(model, route))
        self.ttft = _Pending(m.ttft.labels(model))
        self.tpot = _Pending(m.tpot.labels(model))
        self.prompt = m.tokens.labels(model, "prompt")
        self.completion = m.tokens.labels(model, "completion")
        self.overhead = _Pending(m.overhead.labels(route))
        self.queue_wait = _Pending(m.queue_wait.labels(model))
        self.requests_n = self.prompt_n = self.completion_n = 0

    def flush(self) -> None:
        if self.requests_n:
            self.requests.inc(self.requests_n)
        if self.prompt_n:
            self.prompt.inc(self.prompt_n)
        if self.completion_n:
            self.completion.inc(self.completion_n)
        self.requests_n = self.prompt_n = self.completion_n = 0
        for pending in (self.duration, self.ttft, self.tpot, self.overhead, self.queue_wait):
            pending.flush()


class RequestMetrics(ExchangeObserver):
    """Per-request counters and histograms, recorded once per finished exchange into plain
    counts, which reach the registry's series when it is read (``_Flush``, registered before
    them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        registry.register(_Flush(self))
        self.requests = families.requests(registry, ("model", "node", "route", "status"))
        self.duration = families.duration(registry, ("model", "route"))
        self.ttft = families.ttft(registry)  # streams only: the first relayed token
        self.tpot = families.tpot(registry)  # streams only
        self.tokens = families.tokens(registry)
        self.overhead = Histogram(
            "cortex_gateway_overhead_seconds",
            "Time spent in the gateway itself, upstream and queue wait excluded.",
            ("route",),
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.queue_wait = families.queue_wait(
            registry, ("model",), "its model (loads and evictions included)"
        )
        self._children: dict[tuple[str, str, str, int], _Children] = {}

    def finished(self, exchange: Exchange) -> None:
        ex = exchange
        key = (ex.model or NO_LABEL, ex.node or NO_LABEL, ex.route, ex.status)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = _Children(self, *key)
        started, finished = ex.started, ex.finished
        assert finished is not None  # Gateway.finish stamps it before calling observers
        c.requests_n += 1
        c.duration.observe(finished - started)
        c.prompt_n += ex.prompt_tokens
        c.completion_n += ex.completion_tokens
        if ex.node:
            c.queue_wait.observe(ex.queue_wait_s)
        sent, done, first = ex.upstream_sent, ex.upstream_done, ex.first_token
        if sent is None:
            c.overhead.observe(finished - started - ex.queue_wait_s)
        elif done is not None:
            c.overhead.observe(sent - started - ex.queue_wait_s + finished - done)
        if ex.stream and first is not None:
            c.ttft.observe(first - started)
            if done is not None and ex.completion_tokens > 1:
                c.tpot.observe((done - first) / (ex.completion_tokens - 1))

    def flush(self) -> None:
        """Add the counts since the last call to the registry's series."""
        for c in self._children.values():
            c.flush()


class _Flush(Collector):
    """Registered ahead of the request series, so every read of the registry (scrape or test)
    first moves the pending counts into them; it exports nothing itself."""

    def __init__(self, metrics: RequestMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        self._metrics.flush()
        return iter(())


class LoadMetrics(LoadObserver):
    """Model loads (with their duration) and evictions, per model and node."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.load_seconds = families.load_seconds(registry, ("model", "node"))
        self.loads = families.loads(registry, ("model", "node", "result"))
        self.evictions = Counter(
            "cortex_evictions",
            "Models unloaded to make room for another.",
            ("model", "node"),
            registry=registry,
        )

    def loaded(self, model: str, node: str, seconds: float) -> None:
        self.load_seconds.labels(model, node).observe(seconds)
        self.loads.labels(model, node, "ok").inc()

    def load_failed(self, model: str, node: str) -> None:
        self.loads.labels(model, node, "failed").inc()

    def evicted(self, model: str, node: str) -> None:
        self.evictions.labels(model, node).inc()


class FleetCollector(Collector):
    """Gauges computed from the fleet's last polls at scrape time.

    Device memory and resident models are reported only for nodes that are not down (a down
    node's last status is stale); ``cortex_neuron_up`` is 1 for up and suspect nodes.
    """

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "cortex_neuron_up", "1 when the neuron answers its polls.", labels=["node"]
        )
        memory = GaugeMetricFamily(
            "cortex_gpu_memory_bytes",
            "Device memory per node and device, by state (used, free, total).",
            labels=["node", "device", "state"],
        )
        resident = GaugeMetricFamily(
            "cortex_model_resident", "1 for each model loaded on a node.", labels=["model", "node"]
        )
        for name, state in self._fleet.neurons.items():
            alive = state.health != "down"
            up.add_metric([name], 1.0 if alive else 0.0)
            if not alive or state.status is None:
                continue
            for d in state.status.devices:
                memory.add_metric([name, d.id, "used"], d.used_bytes)
                memory.add_metric([name, d.id, "free"], d.free_bytes)
                memory.add_metric([name, d.id, "total"], d.total_bytes)
            for m in state.status.models:
                if m.state == "loaded":
                    resident.add_metric([m.id, name], 1.0)
        yield up
        yield memory
        yield resident
        yield from self._usage()

    def _usage(self) -> Iterator[Metric]:
        in_flight: dict[str, int] = {}
        queued: dict[str, int] = {}
        for (model, _node), usage in self._fleet.usage.items():
            in_flight[model] = in_flight.get(model, 0) + usage.in_flight
            queued[model] = queued.get(model, 0) + usage.queued
        flying = GaugeMetricFamily(
            "cortex_requests_in_flight",
            "Requests sent upstream and not yet finished.",
            labels=["model"],
        )
        waiting = GaugeMetricFamily(
            "cortex_requests_queued",
            "Requests waiting for their model (loading, or no room yet).",
            labels=["model"],
        )
        for model, n in in_flight.items():
            flying.add_metric([model], n)
        for model, n in queued.items():
            waiting.add_metric([model], n)
        yield flying
        yield waiting


class GatewayMetrics:
    """One application's registry and its sources; ``attach`` wires them into a gateway."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestMetrics(self.registry)
        self.loads = LoadMetrics(self.registry)

    def attach(self, gateway: Gateway) -> None:
        gateway.observers.append(self.requests)
        gateway.loader.observers.append(self.loads)
        self.registry.register(FleetCollector(gateway.fleet))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)


def metrics_handler(
    metrics: GatewayMetrics,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET /metrics in the Prometheus text format."""

    async def handler(request: web.Request) -> web.Response:
        return families.exposition(metrics.registry)

    return handler


def _metrics_port_error(request: web.Request, exc: web.HTTPException) -> CortexError:
    if exc.status == 404:
        return NotFound(
            f"No route for {request.method} {request.path}: this port serves GET /metrics only "
            "(the API is on the gateway's listen port)"
        )
    if exc.status == 405:
        return edge.not_allowed(request, exc)
    return InvalidRequest(exc.text or exc.reason)


_metrics_port_errors = edge.errors_middleware(
    lambda _, err: edge.error_response(err, openai_body(err), err.status),
    _metrics_port_error,
    log,
    "internal error; see the gateway log",
)


def listener(
    host: str, port: int
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """A cleanup_ctx serving the app's METRICS on its own port (``metrics_listen``).

    Separate from ``make_app`` so that in-process tests need no fixed port; ``serve`` adds it.
    """

    @contextlib.asynccontextmanager
    async def serve_metrics(app: web.Application) -> AsyncIterator[None]:
        metrics_app = web.Application(middlewares=[_metrics_port_errors])
        metrics_app.router.add_get("/metrics", metrics_handler(app[METRICS]))
        runner = web.AppRunner(metrics_app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        log.info("metrics on http://%s:%d/metrics", host, port)
        try:
            yield
        finally:
            await runner.cleanup()

    return serve_metrics
