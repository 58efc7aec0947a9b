"""Ollama's API at the gateway: /api/chat, /api/generate and the model routes, over the fleet.

Generation goes through the request core like every dialect (translate.py maps, stream.py
writes NDJSON, relay.py drives it). The model routes answer from the catalogue and the fleet
view: ``/api/tags`` lists what /v1/models lists, ``/api/ps`` the resident copies with their
expiry from the idle TTL, ``/api/show`` a model's context length, template and capabilities.

``/api/embed`` (and the older ``/api/embeddings``) go to the neuron's /v1/embeddings for a model
with ``task = "embed"``; any other model is a 400 naming its task.

``keep_alive`` is the model's idle TTL (Catalogue.set_ttl, until it next unloads): a duration sets
it, a negative one means never, 0 unloads the model (now, for a request with no messages or
prompt; else as soon as it is idle). Models come from models.toml only: pull, push, create,
copy and delete answer 403 saying so. Errors are Ollama's ``{"error": "..."}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec
from aiohttp import web

from cortex import protocol
from cortex.errors import (
    Conflict,
    CortexError,
    Forbidden,
    InvalidRequest,
    ModelNotFound,
)
from cortex.gateway import admin, embeddings, idle
from cortex.gateway.core import GATEWAY, Gateway, Resolved
from cortex.gateway.dialects.ollama.stream import NDJSON_HEADERS, OllamaStreamWriter
from cortex.gateway.dialects.ollama.translate import (
    Clock,
    Target,
    chat_reply,
    chat_to_openai,
    embed_reply,
    embed_to_openai,
    generate_reply,
    generate_to_openai,
    now_rfc3339,
)
from cortex.gateway.exchange import Exchange
from cortex.gateway.relay import accepts_images, read_completion, relay_stream
from cortex.gateway.sessions import session_key
from cortex.protocol import ollama as ol
from cortex.protocol.openai import ModelCard
from cortex.tasks import check_task

VERSION = "0.12.0"  # the Ollama API version this translation follows (clients gate features on it)
EXPIRE_NOW_S = 1e-3  # keep_alive 0 on a generation: the TTL that unloads once the model is idle
FOREVER = "2318-08-24T00:00:00Z"  # expires_at of a copy that never expires (Ollama's style)
_encoder = msgspec.json.Encoder()
ExchangeBody = Callable[[Gateway, web.Request, Exchange], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Wrap = Callable[[str, str, ExchangeBody], Handler]


def error_body(err: CortexError) -> bytes:
    return _encoder.encode(ol.ErrorBody(err.message))


def _json(obj: msgspec.Struct) -> web.Response:
    return web.Response(body=_encoder.encode(obj), content_type="application/json")


# --------------------------------------------------------------------------- generation


def resolve(gateway: Gateway, name: str) -> Resolved:
    """A model name as Ollama clients write it: ``:latest`` is the bare name."""
    try:
        return gateway.resolve(name)
    except ModelNotFound:
        if name.endswith(":latest"):
            return resolve(gateway, name.removesuffix(":latest"))
        raise ModelNotFound(f"model '{name}' not found (see GET /api/tags)") from None


async def chat(gateway: Gateway, request: web.Request, ex: Exchange) -> web.StreamResponse:
    req = protocol.decode(await request.read(), ol.ChatRequest)
    return await _generation(gateway, request, ex, req)


async def generate(gateway: Gateway, request: web.Request, ex: Exchange) -> web.StreamResponse:
    req = protocol.decode(await request.read(), ol.GenerateRequest)
    return await _generation(gateway, request, ex, req)


async def _generation(
    gateway: Gateway,
    request: web.Request,
    ex: Exchange,
    req: ol.ChatRequest | ol.GenerateRequest,
) -> web.StreamResponse:
    chat = isinstance(req, ol.ChatRequest)
    resolved = resolve(gateway, req.model)
    ex.model = resolved.model_id
    if req.nothing_to_generate:
        return await _load_or_unload(gateway, resolved, req)
    ex.stream = req.stream
    keep_alive = _keep_alive(resolved, req.keep_alive)
    if keep_alive is not None:
        gateway.catalogue.set_ttl(resolved.model_id, keep_alive)
    target = Target(
        resolved.model_id,
        _context_length(gateway, resolved),
        accepts_images(resolved),
        resolved.entry is not None,
    )
    if isinstance(req, ol.ChatRequest):
        oa_req = chat_to_openai(req, target)
    else:
        oa_req = generate_to_openai(req, target)
    ex.session = session_key(request.headers, None, oa_req.messages)
    clock = Clock(ex.started)
    upstream = await gateway.open(resolved, "/chat/completions", _encoder.encode(oa_req), ex)
    try:
        if not req.stream:
            completion = await read_completion(upstream, ex)
            reply = (chat_reply if chat else generate_reply)(completion, req.model, clock)
            return _json(reply)
        writer = OllamaStreamWriter("chat" if chat else "generate", req.model, clock)
        return await relay_stream(gateway, request, upstream, ex, writer, NDJSON_HEADERS)
    finally:
        upstream.close()


def _keep_alive(resolved: Resolved, value: ol.KeepAlive | None) -> float | None:
    """The idle TTL ``keep_alive`` asks for, in the fleet's terms: seconds; 0.0 (never) for a
    negative duration; EXPIRE_NOW_S for 0; None when absent."""
    if value is None:
        return None
    if resolved.entry is None:
        raise InvalidRequest(
            f"keep_alive applies to models cortex loads; {resolved.model_id} is served by an "
            "upstream, which is always resident",
            param="keep_alive",
        )
    seconds = ol.parse_duration(value)
    if seconds < 0:
        return 0.0  # the fleet's "never"
    return seconds if seconds > 0 else EXPIRE_NOW_S


async def _load_or_unload(
    gateway: Gateway, resolved: Resolved, req: ol.ChatRequest | ol.GenerateRequest
) -> web.Response:
    """A request with nothing to generate loads the model, or with keep_alive 0 unloads it."""
    reason: ol.DoneReason = "unload" if await _load(gateway, resolved, req.keep_alive) else "load"
    now = now_rfc3339()
    if isinstance(req, ol.ChatRequest):
        return _json(
            ol.ChatChunk(
                model=req.model,
                created_at=now,
                done=True,
                done_reason=reason,
                message=ol.OutMessage(role="assistant", content=""),
            )
        )
    return _json(
        ol.GenerateChunk(
            model=req.model, created_at=now, done=True, done_reason=reason, response=""
        )
    )


async def _load(gateway: Gateway, resolved: Resolved, keep_alive: ol.KeepAlive | None) -> bool:
    """Load the model and set its TTL, or with ``keep_alive`` 0 unload it (True)."""
    unload = keep_alive is not None and ol.parse_duration(keep_alive) == 0
    entry = resolved.entry
    if entry is not None and unload:
        if gateway.catalogue.pinned(entry.id):
            raise Conflict(f"model {entry.id} is pinned; unpin it before unloading it")
        for node, _ in list(gateway.fleet.view().holders(entry.id)):
            with contextlib.suppress(ModelNotFound):  # gone meanwhile (idle TTL): as asked
                await gateway.loader.unload(entry.id, node.name)
        gateway.catalogue.set_ttl(entry.id, None)
    elif entry is not None:
        await gateway.loader.route(entry, keep=True)
        ttl = _keep_alive(resolved, keep_alive)
        if ttl is not None:
            gateway.catalogue.set_ttl(entry.id, ttl)
    elif unload:
        _keep_alive(resolved, keep_alive)  # raises: upstream models do not unload
    return unload


def _context_length(gateway: Gateway, resolved: Resolved) -> int:
    """models.toml's context_length, else what a resident copy reports; 0 when unknown."""
    if resolved.entry is not None and resolved.entry.context_length:
        return resolved.entry.context_length
    copies = [c.context_length for _, c in gateway.fleet.view().holders(resolved.model_id)]
    return max(copies, default=0)


# --------------------------------------------------------------------------- models


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _digest(model_id: str) -> str:
    return hashlib.sha256(model_id.encode()).hexdigest()


def _details(gateway: Gateway, model_id: str) -> ol.ModelDetails:
    entry = gateway.catalogue.get(model_id)
    if entry is None:
        return ol.ModelDetails(format="")
    level = entry.quantization if entry.quantization != "none" else entry.dtype
    fmt = "gguf" if entry.source.endswith(".gguf") else "safetensors"
    return ol.ModelDetails(format=fmt, quantization_level=level)


def _size(gateway: Gateway, model_id: str) -> int:
    measured = [c.measured_bytes for _, c in gateway.fleet.view().holders(model_id)]
    if any(measured):
        return max(measured)
    entry = gateway.catalogue.get(model_id)
    return int(entry.vram_gb * 1e9) if entry is not None else 0


def _listed(gateway: Gateway, card: ModelCard) -> ol.ListedModel:
    return ol.ListedModel(
        name=card.id,
        model=card.id,
        modified_at=_iso(card.created),
        size=_size(gateway, card.id),
        digest=_digest(card.id),
        details=_details(gateway, card.id),
    )


async def tags(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    return _json(ol.TagsResponse([_listed(gateway, card) for card in admin.cards(gateway)]))


async def ps(request: web.Request) -> web.Response:
    """Loaded copies (one line a model), each with when its idle TTL would unload it."""
    gateway = request.app[GATEWAY]
    catalogue = gateway.catalogue.view().by_id
    default_ttl = gateway.config.eviction.default_ttl_s
    now = time.time()
    running: dict[str, ol.RunningModel] = {}
    for node in gateway.fleet.view().nodes:
        if node.health == "down":
            continue
        for copy in node.models:
            if copy.state != "loaded" or copy.model_id in running:
                continue
            ttl = idle.ttl_of(catalogue.get(copy.model_id), default_ttl)
            left = idle.ttl_left(copy, ttl, now)
            if ttl <= 0 or copy.pinned:
                expires = FOREVER
            else:
                expires = _iso(now + (left if left is not None else ttl))
            size = _size(gateway, copy.model_id)
            running[copy.model_id] = ol.RunningModel(
                name=copy.model_id,
                model=copy.model_id,
                size=size,
                digest=_digest(copy.model_id),
                details=_details(gateway, copy.model_id),
                expires_at=expires,
                size_vram=0 if copy.device == "cpu" else size,
                context_length=copy.context_length,
            )
    return _json(ol.PsResponse(list(running.values())))


async def show(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    req = protocol.decode(await request.read(), ol.ShowRequest)
    resolved = resolve(gateway, req.model_name)
    entry = resolved.entry
    context = _context_length(gateway, resolved)
    info: dict[str, object] = {
        "general.architecture": "cortex",
        "general.basename": resolved.model_id,
    }
    capabilities = ["completion", "tools"]
    if entry is not None:
        capabilities = ["completion"]
        capabilities += ["tools"] if entry.tool_parser != "none" else []
        capabilities += ["vision"] if entry.vision else []
    parameters = ""
    if context:
        info["cortex.context_length"] = context
        parameters = f"num_ctx {context}"
    source = entry.source if entry is not None else "an [[upstreams]] server"
    return _json(
        ol.ShowResponse(
            modelfile=f"# served by cortex from models.toml\nFROM {source}\n"
            + (f"PARAMETER {parameters}\n" if parameters else ""),
            parameters=parameters,
            template=entry.chat_template if entry is not None else "",
            details=_details(gateway, resolved.model_id),
            model_info=info,
            capabilities=capabilities,
            modified_at=_iso(gateway.catalogue.view().read_at),
        )
    )


async def version(request: web.Request) -> web.Response:
    return _json(ol.VersionResponse(VERSION))


async def embed(gateway: Gateway, request: web.Request, ex: Exchange) -> web.StreamResponse:
    """/api/embed, and /api/embeddings (``prompt`` in, one ``embedding`` out), as
    /v1/embeddings; no input loads (or with keep_alive 0 unloads) the model, as in Ollama."""
    req = protocol.decode(await request.read(), ol.EmbedRequest)
    legacy = request.path == "/api/embeddings"
    resolved = resolve(gateway, req.model)
    ex.model = resolved.model_id
    if resolved.entry is not None:  # before any load or TTL: a chat model is a 400
        check_task(resolved.model_id, resolved.entry.task, "embed")
    if not req.inputs:
        await _load(gateway, resolved, req.keep_alive)
        return _json(
            ol.EmbeddingResponse([]) if legacy else ol.EmbedResponse(model=req.model, embeddings=[])
        )
    keep_alive = _keep_alive(resolved, req.keep_alive)
    if keep_alive is not None:
        gateway.catalogue.set_ttl(resolved.model_id, keep_alive)
    target = Target(
        resolved.model_id, _context_length(gateway, resolved), False, bool(resolved.entry)
    )
    answer = await embeddings.fetch(gateway, resolved, embed_to_openai(req, target), ex)
    if legacy:
        return _json(ol.EmbeddingResponse(embeddings.vectors(answer)[0]))
    return _json(embed_reply(answer, req.model, ex.started, ex.queue_wait_s))


async def not_here(request: web.Request) -> web.Response:
    """pull, push, create, copy, delete, blobs: models are the operator's, in models.toml."""
    raise Forbidden(
        f"{request.method} {request.path} is not available: cortex serves the models listed in "
        "models.toml (add one there and reload with SIGHUP; unload with keep_alive 0)"
    )


def add_routes(app: web.Application, exchange: Wrap) -> None:
    """Register the Ollama routes; ``exchange(dialect, route, body)`` wraps a generation
    handler so it is accounted like every other exchange (app._exchange_handler)."""
    router = app.router
    router.add_post("/api/chat", exchange("ollama", "/api/chat", chat))
    router.add_post("/api/generate", exchange("ollama", "/api/generate", generate))
    router.add_post("/api/embed", exchange("ollama", "/api/embed", embed))
    router.add_post("/api/embeddings", exchange("ollama", "/api/embeddings", embed))
    router.add_get("/api/tags", tags)
    router.add_get("/api/ps", ps)
    router.add_post("/api/show", show)
    router.add_get("/api/version", version)
    for path in ("/api/pull", "/api/push", "/api/create", "/api/copy"):
        router.add_post(path, not_here)
    router.add_delete("/api/delete", not_here)
    router.add_route("*", "/api/blobs/{digest}", not_here)
