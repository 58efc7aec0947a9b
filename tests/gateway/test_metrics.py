"""Gateway metrics: the observers' arithmetic, the fleet gauges, and the exposition end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, unused_port
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from cortex.config import CortexConfig, GatewaySection, ModelsConfig, NeuronRef, UpstreamRef
from cortex.gateway.app import make_app
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.exchange import Exchange
from cortex.gateway.fleet import Fleet
from cortex.gateway.metrics import METRICS, FleetCollector, GatewayMetrics, _Pending, listener
from cortex.gateway.settings import Live
from cortex.metric_families import OVERHEAD_BUCKETS
from cortex.protocol.neuron import DeviceStatus, ModelStatus, NeuronStatus
from tests.gateway.mock_upstream import WORDS, MockState, make_mock_upstream
from tests.prometheus_samples import samples, value


def exchange(**fields: Any) -> Exchange:
    """A streamed request that spent 1 ms in the gateway before and 1 ms after the upstream."""
    ex = Exchange("openai", "/v1/chat/completions", model="m", node="n1", stream=True)
    ex.started = 100.0
    ex.queue_wait_s = 0.5
    ex.upstream_sent = 100.501
    ex.first_token = 101.0
    ex.upstream_done = 103.0
    ex.finished = 103.001
    ex.prompt_tokens, ex.completion_tokens = 7, 5
    for name, v in fields.items():
        setattr(ex, name, v)
    return ex


def test_streamed_exchange_records_every_series() -> None:
    metrics = GatewayMetrics()
    metrics.requests.finished(exchange())
    metrics.requests.finished(exchange())
    found = samples(metrics.exposition())
    route = "/v1/chat/completions"
    assert (
        value(found, "cortex_requests_total", model="m", node="n1", route=route, status="200") == 2
    )
    assert value(found, "cortex_tokens_total", model="m", kind="prompt") == 14
    assert value(found, "cortex_tokens_total", model="m", kind="completion") == 10
    assert value(found, "cortex_request_duration_seconds_sum", model="m", route=route) == (
        pytest.approx(2 * 3.001)
    )
    assert value(found, "cortex_time_to_first_token_seconds_sum", model="m") == pytest.approx(2.0)
    # 2 s for the 4 tokens after the first
    assert value(found, "cortex_time_per_output_token_seconds_sum", model="m") == pytest.approx(1.0)
    assert value(found, "cortex_queue_wait_seconds_sum", model="m") == pytest.approx(1.0)
    assert value(found, "cortex_gateway_overhead_seconds_sum", route=route) == pytest.approx(0.004)
    assert value(found, "cortex_gateway_overhead_seconds_bucket", route=route, le="0.0025") == 2


def test_non_stream_exchange_has_no_ttft_or_tpot() -> None:
    metrics = GatewayMetrics()
    metrics.requests.finished(exchange(stream=False, first_token=103.0))
    found = samples(metrics.exposition())
    assert value(found, "cortex_time_to_first_token_seconds_count", model="m") == 0
    assert value(found, "cortex_time_per_output_token_seconds_count", model="m") == 0
    assert value(found, "cortex_tokens_total", model="m", kind="completion") == 5


def test_exchange_that_never_routed_counts_under_dash() -> None:
    metrics = GatewayMetrics()
    unrouted = Exchange("anthropic", "/v1/messages", status=404)
    unrouted.started, unrouted.finished = 10.0, 10.0002
    metrics.requests.finished(unrouted)
    found = samples(metrics.exposition())
    labels = {"model": "-", "node": "-", "route": "/v1/messages", "status": "404"}
    assert value(found, "cortex_requests_total", **labels) == 1
    assert value(found, "cortex_gateway_overhead_seconds_sum", route="/v1/messages") == (
        pytest.approx(0.0002)
    )
    assert value(found, "cortex_queue_wait_seconds_count", model="-") == 0


def test_load_observer_counts_loads_failures_and_evictions() -> None:
    metrics = GatewayMetrics()
    metrics.loads.loaded("m", "n1", 12.5)
    metrics.loads.load_failed("m", "n2")
    metrics.loads.evicted("old", "n1")
    found = samples(metrics.exposition())
    assert value(found, "cortex_model_loads_total", model="m", node="n1", result="ok") == 1
    assert value(found, "cortex_model_loads_total", model="m", node="n2", result="failed") == 1
    assert value(found, "cortex_model_load_seconds_sum", model="m", node="n1") == 12.5
    assert value(found, "cortex_evictions_total", model="old", node="n1") == 1


def _status(models: list[ModelStatus]) -> NeuronStatus:
    gpu = DeviceStatus(
        id="cuda:0",
        kind="cuda",
        index=0,
        name="gpu",
        total_bytes=24_000,
        free_bytes=10_000,
        used_bytes=14_000,
    )
    return NeuronStatus(name="n1", version="0", harnesses=[], devices=[gpu], models=models)


def test_fleet_gauges_are_read_at_scrape_time() -> None:
    config = CortexConfig(
        neurons=(
            NeuronRef(name="n1", endpoint="http://127.0.0.1:1"),
            NeuronRef(name="n2", endpoint="http://127.0.0.1:2"),
        )
    )
    live = Live.of(config)
    fleet = Fleet(live, Catalogue(live), None)  # type: ignore[arg-type]  # never polls here
    loaded = ModelStatus(
        id="m", state="loaded", harness="h", device="cuda:0", source="s", quantization="none"
    )
    loading = ModelStatus(
        id="x", state="loading", harness="h", device="cuda:0", source="s", quantization="none"
    )
    fleet.neurons["n1"].status = _status([loaded, loading])
    fleet.counts("m", "n1").in_flight = 3
    fleet.counts("m", "n1").queued = 1
    metrics = GatewayMetrics()
    metrics.registry.register(FleetCollector(fleet))
    found = samples(metrics.exposition())
    assert value(found, "cortex_neuron_up", node="n1") == 1
    assert value(found, "cortex_neuron_up", node="n2") == 0
    assert value(found, "cortex_gpu_memory_bytes", node="n1", device="cuda:0", state="free") == (
        10_000
    )
    assert value(found, "cortex_gpu_memory_bytes", node="n1", device="cuda:0", state="used") == (
        14_000
    )
    assert value(found, "cortex_model_resident", model="m", node="n1") == 1
    assert ("cortex_model_resident", frozenset({("model", "x"), ("node", "n1")})) not in found
    assert value(found, "cortex_requests_in_flight", model="m") == 3
    assert value(found, "cortex_requests_queued", model="m") == 1
    fleet.neurons["n1"].failures = 2  # down: its memory and models are no longer reported
    found = samples(metrics.exposition())
    assert value(found, "cortex_neuron_up", node="n1") == 0
    assert ("cortex_model_resident", frozenset({("model", "m"), ("node", "n1")})) not in found


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    server = TestServer(make_mock_upstream(MockState()), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/v1"))
    await server.close()


async def test_requests_through_a_gateway_reach_its_own_metrics_port(upstream_url: str) -> None:
    config = CortexConfig(
        gateway=GatewaySection(), upstreams=(UpstreamRef(name="mock", endpoint=upstream_url),)
    )
    app = make_app(config, ModelsConfig())
    port = unused_port()
    app.cleanup_ctx.append(listener("127.0.0.1", port))
    gw = TestServer(app, host="127.0.0.1")
    await gw.start_server()
    chat = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
    try:
        async with aiohttp.ClientSession() as session:
            for body in (chat, {**chat, "stream": True}, {**chat, "model": "nope"}):
                async with session.post(gw.make_url("/v1/chat/completions"), json=body) as r:
                    await r.read()
            async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 200
                found = samples(await r.read())
    finally:
        await gw.close()
    route = "/v1/chat/completions"
    ok = {"model": "mock-gpt", "node": "mock", "route": route, "status": "200"}
    assert value(found, "cortex_requests_total", **ok) == 2
    missing = {"model": "-", "node": "-", "route": route, "status": "404"}
    assert value(found, "cortex_requests_total", **missing) == 1
    assert value(found, "cortex_tokens_total", model="mock-gpt", kind="completion") == 2 * len(
        WORDS
    )
    assert value(found, "cortex_time_to_first_token_seconds_count", model="mock-gpt") == 1
    assert value(found, "cortex_requests_in_flight", model="mock-gpt") == 0


def test_each_app_has_its_own_registry() -> None:
    first, second = (
        make_app(CortexConfig(), ModelsConfig()),
        make_app(CortexConfig(), ModelsConfig()),
    )
    assert first[METRICS].registry is not second[METRICS].registry


def test_pending_counts_reach_the_series_as_prometheus_would_count_them() -> None:
    """Observations held between scrapes land in the buckets Histogram.observe would pick
    (a value on a bound counts in that bound's bucket), and every scrape adds only what is new."""
    values = [*OVERHEAD_BUCKETS, 0.0, 0.00007, 0.03, 99.0]
    kept, direct = CollectorRegistry(), CollectorRegistry()
    pending = _Pending(Histogram("h", "h", buckets=OVERHEAD_BUCKETS, registry=kept))
    reference = Histogram("h", "h", buckets=OVERHEAD_BUCKETS, registry=direct)
    for _ in range(2):  # two scrapes: the second adds the same again
        for v in values:
            pending.observe(v)
            reference.observe(v)
        pending.flush()
        assert _counts(kept) == _counts(direct)


def _counts(registry: CollectorRegistry) -> dict[Any, float]:
    return {k: v for k, v in samples(generate_latest(registry)).items() if "_created" not in k[0]}
