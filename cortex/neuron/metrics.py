"""The neuron's Prometheus metrics, served on its own API port at ``GET /metrics`` (token required).

Names and units match the gateway's (docs/metrics.md); a dashboard tells the roles apart by
the scrape job. There is no ``node`` label: the scrape target identifies the neuron.

Each application owns a ``CollectorRegistry``. Requests are recorded once each by
``completions.handle`` through ``finished`` (labelled children cached per (model, status), as on
the gateway); loads through ``ModelManager.on_load``; in-flight, queued, resident models and
device memory are read from the ModelManager at scrape time (an NVML read, microseconds).

Times, from the request's perf_counter stamps (``outcome.Outcome``): duration from the body
decoded to the response done; queue wait until admission (``max_concurrency``); TTFT until the
harness produced the first token (stream or not: the neuron sees generation itself); time per
output token = (done - first token) / (completion tokens - 1).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import Counter
from prometheus_client.registry import Collector

from cortex import metric_families as families
from cortex.neuron.lifecycle import ModelManager
from cortex.neuron.outcome import Outcome

NO_MODEL = "-"  # a request that was never admitted (unknown model): client text is no label


class _Children:
    """The labelled series one (model, status) writes to, resolved once."""

    __slots__ = (
        "cache_hit",
        "cache_miss",
        "completion",
        "duration",
        "prompt",
        "queue_wait",
        "requests",
        "tpot",
        "ttft",
    )

    def __init__(self, m: NeuronMetrics, model: str, status: int) -> None:
        self.requests = m.requests.labels(model, str(status))
        self.duration = m.duration.labels(model)
        self.queue_wait = m.queue_wait.labels(model)
        self.ttft = m.ttft.labels(model)
        self.tpot = m.tpot.labels(model)
        self.prompt = m.tokens.labels(model, "prompt")
        self.completion = m.tokens.labels(model, "completion")
        self.cache_hit = m.prefix_cache.labels(model, "hit")
        self.cache_miss = m.prefix_cache.labels(model, "miss")


class NeuronMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = families.requests(r, ("model", "status"))
        self.duration = families.duration(r, ("model",))
        self.queue_wait = families.queue_wait(r, ("model",), "a max_concurrency place")
        self.ttft = families.ttft(r)
        self.tpot = families.tpot(r)
        self.tokens = families.tokens(r)
        self.prefix_cache = Counter(
            "cortex_prefix_cache_tokens",
            "Prompt tokens by whether their KV came from the prefix cache (hit) or was computed.",
            ("model", "result"),
            registry=r,
        )
        self.load_seconds = families.load_seconds(r, ("model",))
        self.loads = families.loads(r, ("model", "result"))
        self._children: dict[tuple[str, int], _Children] = {}

    def attach(self, manager: ModelManager) -> None:
        """Count ``manager``'s loads and read its state at every scrape."""
        manager.on_load.append(self.load_done)
        self.registry.register(ManagerCollector(manager))

    def finished(self, model: str, outcome: Outcome) -> None:
        """Record one chat completion; called once per request however it ended."""
        done = time.perf_counter()
        admitted = outcome.admitted
        key = (model if admitted is not None else NO_MODEL, outcome.status)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = _Children(self, *key)
        started = outcome.started
        c.requests.inc()
        c.duration.observe(done - started)
        if admitted is None:
            return
        c.queue_wait.observe(admitted - started)
        if outcome.prompt_tokens:
            c.prompt.inc(outcome.prompt_tokens)
            c.cache_hit.inc(outcome.cache_hits)
            c.cache_miss.inc(outcome.cache_misses)
        if outcome.all_completion_tokens:
            c.completion.inc(outcome.all_completion_tokens)
        first = outcome.first_token
        if first is not None:
            c.ttft.observe(first - started)
            if outcome.completion_tokens > 1:
                c.tpot.observe((done - first) / (outcome.completion_tokens - 1))

    def load_done(self, model: str, ok: bool, seconds: float) -> None:
        if ok:
            self.load_seconds.labels(model).observe(seconds)
        self.loads.labels(model, "ok" if ok else "failed").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ManagerCollector(Collector):
    """In-flight, queued and resident models, and device memory, as the manager has them now."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        flying = GaugeMetricFamily(
            "cortex_requests_in_flight", "Requests generating now.", labels=["model"]
        )
        queued = GaugeMetricFamily(
            "cortex_requests_queued", "Requests waiting for admission.", labels=["model"]
        )
        resident = GaugeMetricFamily(
            "cortex_model_resident", "1 for each loaded model.", labels=["model"]
        )
        for m in self._manager.models():
            flying.add_metric([m.id], m.in_flight)
            queued.add_metric([m.id], m.queued)
            if m.state == "loaded":
                resident.add_metric([m.id], 1.0)
        memory = GaugeMetricFamily(
            "cortex_gpu_memory_bytes",
            "Device memory by state (used, free, total); the cpu device is its budget.",
            labels=["device", "state"],
        )
        for d in self._manager.devices():
            memory.add_metric([d.id, "used"], d.used_bytes)
            memory.add_metric([d.id, "free"], d.free_bytes)
            memory.add_metric([d.id, "total"], d.total_bytes)
        yield from (flying, queued, resident, memory)


METRICS: web.AppKey[NeuronMetrics] = web.AppKey("cortex.neuron.metrics", NeuronMetrics)


async def handler(request: web.Request) -> web.Response:
    """GET /metrics in the Prometheus text format."""
    return families.exposition(request.app[METRICS].registry)
