"""GET /v1/models, GET /cortex/status and POST /cortex/models/{id}/{action}."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec
from aiohttp import web

from cortex import __version__, protocol
from cortex.errors import InvalidRequest, ModelNotFound, NotFound
from cortex.gateway import idle
from cortex.gateway.catalogue import sampling_in_use
from cortex.gateway.core import GATEWAY, Gateway
from cortex.protocol import anthropic
from cortex.protocol.admin import (
    ActionResult,
    GatewayStatus,
    HistoryPoint,
    ModelAction,
    ModelView,
    NeuronView,
    Rates,
    RecentError,
    ResidentView,
    UpstreamView,
)
from cortex.protocol.openai import ModelCard, ModelList

_encoder = msgspec.json.Encoder()
ACTIONS = ("load", "unload", "pin", "unpin")


def _json(obj: msgspec.Struct) -> web.Response:
    return web.Response(body=_encoder.encode(obj), content_type="application/json")


def cards(gateway: Gateway) -> list[ModelCard]:
    """The cards of GET /v1/models (every dialect's model list starts from them)."""
    upstream_models = {
        name: list(up.models) for name, up in gateway.fleet.upstreams.items() if up.up
    }
    return gateway.catalogue.view().model_cards(gateway.fleet.view(), upstream_models)


def _anthropic(request: web.Request) -> bool:
    """Anthropic's SDKs always send anthropic-version; they expect their own list shape."""
    return "anthropic-version" in request.headers


def _info(card: ModelCard) -> anthropic.ModelInfo:
    created = datetime.fromtimestamp(card.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return anthropic.ModelInfo(id=card.id, display_name=card.id, created_at=created)


async def list_models(request: web.Request) -> web.Response:
    listed = cards(request.app[GATEWAY])
    if not _anthropic(request):
        return _json(ModelList(data=listed))
    infos = [_info(card) for card in listed]
    first, last = (infos[0].id, infos[-1].id) if infos else (None, None)
    return _json(anthropic.ModelListPage(data=infos, first_id=first, last_id=last))


async def get_model(request: web.Request) -> web.Response:
    """One card, by id or alias (the SDKs' models.retrieve)."""
    gateway = request.app[GATEWAY]
    name = request.match_info["model"]
    entry = gateway.catalogue.resolve(name)
    wanted = entry.id if entry is not None else name
    for card in cards(gateway):
        if card.id == wanted:
            return _json(_info(card) if _anthropic(request) else card)
    raise ModelNotFound(f"The model '{name}' does not exist (see GET /v1/models).")


def build_status(gateway: Gateway) -> GatewayStatus:
    fleet = gateway.fleet
    view = fleet.view()
    history = gateway.history
    per_model, per_node = history.by(lambda d: d.model), history.by(lambda d: d.node)
    neurons = []
    for name, state in sorted(fleet.neurons.items()):
        status = state.status
        neurons.append(
            NeuronView(
                name=name,
                endpoint=state.ref.endpoint,
                state=state.health,  # type: ignore[arg-type]
                error=state.error,
                last_seen=state.last_seen,
                in_flight=status.in_flight if status else 0,
                requests_per_s=per_node.get(name, (0.0, 0.0))[0],
                tokens_per_s=per_node.get(name, (0.0, 0.0))[1],
                devices=list(status.devices) if status and state.health != "down" else [],
            )
        )
    progress = {
        (m.id, name): m.progress.fraction
        for name, s in fleet.neurons.items()
        if s.status
        for m in s.status.models
        if m.progress is not None
    }
    models = []
    catalogue = gateway.catalogue.view()
    now, default_ttl = time.time(), gateway.config.eviction.default_ttl_s
    for entry in catalogue.models:
        ttl = idle.ttl_of(entry, default_ttl)
        holders = list(view.holders(entry.id))
        placements = [
            ResidentView(
                node=node.name,
                device=copy.device,
                state=copy.state,
                bytes=copy.measured_bytes,
                in_flight=copy.in_flight,
                queued=copy.queued,
                last_used=copy.last_used,
                progress=progress.get((entry.id, node.name)),
                ttl_left_s=idle.ttl_left(copy, ttl, now),
            )
            for node, copy in holders
        ]
        states = {p.state for p in placements}
        gate = gateway.loader.gates.get(entry.id)
        models.append(
            ModelView(
                id=entry.id,
                state="resident" if "loaded" in states else "loading" if states else "available",
                pinned=entry.pinned,
                priority=entry.priority,
                vram_gb=entry.vram_gb,
                context_length=entry.context_length
                or max((c.context_length for _, c in view.holders(entry.id)), default=0),
                quantization=entry.quantization,
                queued=gate.waiting if gate else 0,
                in_flight=sum(p.in_flight for p in placements),
                requests_per_s=per_model.get(entry.id, (0.0, 0.0))[0],
                tokens_per_s=per_model.get(entry.id, (0.0, 0.0))[1],
                placements=placements,
                sampling=sampling_in_use(entry.sampling, [copy for _, copy in holders]),
                store=catalogue.stores.get(entry.id),
                nodes=list(entry.nodes),
            )
        )
    upstreams = [
        UpstreamView(
            name=name, endpoint=up.ref.endpoint, up=up.up, models=list(up.models), error=up.error
        )
        for name, up in sorted(fleet.upstreams.items())
    ]
    history.sample_queue(sum(m.queued + sum(p.queued for p in m.placements) for m in models))
    minute = history.last_minute()
    return GatewayStatus(
        version=__version__,
        neurons=neurons,
        models=models,
        upstreams=upstreams,
        rates=Rates(
            requests_per_s=minute.requests_per_s,
            tokens_per_s=minute.tokens_per_s,
            error_rate=minute.error_rate,
            ttft_p50_s=minute.ttft_p50_s,
            ttft_p95_s=minute.ttft_p95_s,
        ),
        evictions=gateway.loader.stats.evictions,
        history=[
            HistoryPoint(
                t=bucket.start,
                requests_per_s=w.requests_per_s,
                tokens_per_s=w.tokens_per_s,
                error_rate=w.error_rate,
                ttft_p50_s=w.ttft_p50_s,
                ttft_p95_s=w.ttft_p95_s,
                queue_depth=bucket.queue_depth,
            )
            for bucket, w in history.buckets()
        ],
        recent_errors=[
            RecentError(
                at=e.at,
                request_id=e.request_id,
                status=e.status,
                model=e.model,
                message=e.error or "",
            )
            for e in history.recent_errors()
        ],
    )


async def status(request: web.Request) -> web.Response:
    return _json(build_status(request.app[GATEWAY]))


async def model_action(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise NotFound(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    raw = await request.read()
    body = protocol.decode(raw, ModelAction) if raw.strip() else ModelAction()
    name = request.match_info["model"]
    entry = gateway.catalogue.resolve(name)
    if entry is None:
        raise ModelNotFound(f"The model '{name}' is not in the catalogue.")
    if body.node is not None and body.node not in gateway.fleet.neurons:
        raise InvalidRequest(f"unknown node {body.node!r}", param="node")
    fleet = gateway.fleet
    if action in ("pin", "unpin"):
        gateway.catalogue.set_pin(entry.id, action == "pin")
        if action == "pin":
            gateway.loader.ensure_pinned()
        return _json(ActionResult(model=entry.id, action=action + "ned"))
    if action == "load":
        node = await gateway.loader.route(entry, node=body.node, keep=True)
        return _json(ActionResult(model=entry.id, action="loaded", node=node))
    holders = [n.name for n, _ in fleet.view().holders(entry.id)]
    targets = [n for n in holders if body.node is None or n == body.node]
    if not targets:
        raise NotFound(f"{entry.id} is not resident{' on ' + body.node if body.node else ''}")
    for node in targets:
        await gateway.loader.unload(entry.id, node)
    return _json(ActionResult(model=entry.id, action="unloaded", node=",".join(targets)))
