"""The gateway's admin API (/cortex/...): fleet status and model actions, for `cortex status`."""

from __future__ import annotations

from typing import Literal

import msgspec

from cortex.config import SamplingDefaults, Store
from cortex.protocol.neuron import DeviceStatus


class ResidentView(msgspec.Struct, kw_only=True):
    node: str
    device: str
    state: str
    bytes: int = 0
    in_flight: int = 0
    queued: int = 0
    last_used: float | None = None
    progress: float | None = None
    ttl_left_s: float | None = None


class ModelView(msgspec.Struct, kw_only=True):
    id: str
    state: Literal["resident", "loading", "available", "unavailable"]
    pinned: bool = False
    priority: int = 0
    vram_gb: float = 0.0
    context_length: int = 0  # models.toml's value, else what a resident copy reports; 0: unknown
    quantization: str = "none"
    queued: int = 0
    in_flight: int = 0
    requests_per_s: float = 0.0  # the last minute
    tokens_per_s: float = 0.0
    placements: list[ResidentView] = msgspec.field(default_factory=list)
    sampling: SamplingDefaults | None = None  # as in /v1/models' cortex object
    # Where a neuron found it (neuron.toml discover) and which nodes; None: models.toml's
    store: Store | None = None
    nodes: list[str] = msgspec.field(default_factory=list)  # the nodes it may load on; []: any


class NeuronView(msgspec.Struct, kw_only=True):
    name: str
    endpoint: str
    state: Literal["up", "suspect", "down"]
    error: str | None = None
    last_seen: float | None = None
    in_flight: int = 0
    requests_per_s: float = 0.0  # the last minute
    tokens_per_s: float = 0.0
    devices: list[DeviceStatus] = msgspec.field(default_factory=list)


class UpstreamView(msgspec.Struct, kw_only=True):
    name: str
    endpoint: str
    up: bool
    models: list[str] = msgspec.field(default_factory=list)
    error: str | None = None


class Rates(msgspec.Struct, kw_only=True):
    """The last minute (``window_s``); time to first token counts streams only."""

    window_s: float = 60.0
    requests_per_s: float = 0.0
    tokens_per_s: float = 0.0
    error_rate: float = 0.0  # share of requests answered 429 or 5xx
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None


class HistoryPoint(msgspec.Struct, kw_only=True):
    """One 10-second bucket of the last 15 minutes (``t``: its start, Unix time)."""

    t: float
    requests_per_s: float
    tokens_per_s: float
    error_rate: float
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    queue_depth: int = 0  # the most requests waiting (gateway and neurons) seen in it


class RecentError(msgspec.Struct, kw_only=True):
    at: float  # Unix time
    request_id: str
    status: int
    model: str
    message: str


class GatewayStatus(msgspec.Struct, kw_only=True):
    version: str
    neurons: list[NeuronView]
    models: list[ModelView]
    upstreams: list[UpstreamView] = msgspec.field(default_factory=list)
    rates: Rates = msgspec.field(default_factory=Rates)
    evictions: int = 0
    history: list[HistoryPoint] = msgspec.field(default_factory=list)
    recent_errors: list[RecentError] = msgspec.field(default_factory=list)


class ModelAction(msgspec.Struct, kw_only=True):
    node: str | None = None


class ActionResult(msgspec.Struct, kw_only=True):
    model: str
    action: str
    node: str | None = None
    detail: str = ""
