"""The Prometheus families both roles export under the same names, declared once.

The gateway and every neuron publish ``cortex_time_to_first_token_seconds``,
``cortex_time_per_output_token_seconds``, ``cortex_tokens_total``, ``cortex_requests_total`` and
friends (docs/metrics.md); a dashboard tells the roles apart by the scrape job and joins them by
name, so the same name must have the same help, unit and buckets on both. Label sets differ by
role (the gateway adds ``node`` and ``route``), so each constructor takes its labels.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics import Counter, Histogram

# Histogram buckets for LLM work, in seconds.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1)
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
QUEUE_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
LOAD_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

Labels = Sequence[str]


def requests(registry: CollectorRegistry, labels: Labels) -> Counter:
    return Counter(
        "cortex_requests", "Requests finished, by HTTP status.", labels, registry=registry
    )


def duration(registry: CollectorRegistry, labels: Labels) -> Histogram:
    return Histogram(
        "cortex_request_duration_seconds",
        "Request duration (queue wait included).",
        labels,
        buckets=DURATION_BUCKETS,
        registry=registry,
    )


def queue_wait(registry: CollectorRegistry, labels: Labels, what: str) -> Histogram:
    return Histogram(
        "cortex_queue_wait_seconds",
        f"Time a request waited for {what}.",
        labels,
        buckets=QUEUE_BUCKETS,
        registry=registry,
    )


def ttft(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "cortex_time_to_first_token_seconds",
        "Time from request arrival to the first generated token.",
        ("model",),
        buckets=TTFT_BUCKETS,
        registry=registry,
    )


def tpot(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "cortex_time_per_output_token_seconds",
        "Mean time between output tokens after the first.",
        ("model",),
        buckets=TPOT_BUCKETS,
        registry=registry,
    )


def tokens(registry: CollectorRegistry) -> Counter:
    return Counter(
        "cortex_tokens",
        "Tokens by model and kind (prompt or completion), as reported in usage.",
        ("model", "kind"),
        registry=registry,
    )


def load_seconds(registry: CollectorRegistry, labels: Labels) -> Histogram:
    return Histogram(
        "cortex_model_load_seconds",
        "Duration of successful model loads.",
        labels,
        buckets=LOAD_BUCKETS,
        registry=registry,
    )


def loads(registry: CollectorRegistry, labels: Labels) -> Counter:
    return Counter(
        "cortex_model_loads", "Model loads by result (ok or failed).", labels, registry=registry
    )


def exposition(registry: CollectorRegistry) -> web.Response:
    """GET /metrics: the registry in the Prometheus text format."""
    return web.Response(
        body=generate_latest(registry), headers={"content-type": CONTENT_TYPE_LATEST}
    )
