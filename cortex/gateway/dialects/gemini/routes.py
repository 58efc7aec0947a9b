"""Gemini's API at the gateway: ``/v1beta/models`` and ``/v1beta/models/{model}:METHOD``.

METHOD is ``generateContent``, ``streamGenerateContent`` (``?alt=sse`` for SSE, else one JSON
array written as it grows), ``countTokens`` (the neuron's own tokenizer, as for Anthropic), or
for a ``task = "embed"`` model ``embedContent`` and ``batchEmbedContents`` (/v1/embeddings).
Model names resolve like every dialect's (models.toml ids and aliases such as ``gemini-*``).
The key comes from ``x-goog-api-key``, ``?key=`` or a bearer token (app.py). Errors are
Google's ``{"error": {"code", "message", "status"}}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from cortex.errors import NotFound
from cortex.gateway import admin, embeddings
from cortex.gateway.core import GATEWAY, Gateway, Resolved
from cortex.gateway.dialects.anthropic.routes import count_prompt
from cortex.gateway.dialects.gemini.stream import ARRAY_HEADERS, GeminiStreamWriter
from cortex.gateway.dialects.gemini.translate import (
    embed_to_openai,
    new_response_id,
    reply,
    to_openai,
)
from cortex.gateway.exchange import Exchange
from cortex.gateway.relay import SSE_HEADERS, accepts_images, read_completion, relay_stream
from cortex.gateway.sessions import session_key
from cortex.protocol import gemini as gm
from cortex.protocol.neuron import TokenizeRequest
from cortex.protocol.openai import ModelCard

PREFIX = "/v1beta/"
GENERATION_METHODS = ("generateContent", "streamGenerateContent", "countTokens")
EMBEDDING_METHODS = ("embedContent", "batchEmbedContents")
METHODS = GENERATION_METHODS + EMBEDDING_METHODS
_encoder = msgspec.json.Encoder()
ExchangeBody = Callable[[Gateway, web.Request, Exchange], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Wrap = Callable[[str, str, ExchangeBody], Handler]


def _json(obj: msgspec.Struct) -> web.Response:
    return web.Response(body=_encoder.encode(obj), content_type="application/json")


def _target(request: web.Request) -> tuple[str, str]:
    """(model name, method) of ``/v1beta/models/{model}:{method}``."""
    model, _, method = request.match_info["target"].rpartition(":")
    if not model or method not in METHODS:
        raise NotFound(
            f"No route for {request.method} {request.path}: expected "
            f"/v1beta/models/MODEL:{{{','.join(METHODS)}}}"
        )
    return model, method


def _model(gateway: Gateway, card: ModelCard) -> gm.Model:
    entry = gateway.catalogue.get(card.id)
    embed = entry is not None and entry.task == "embed"
    context_length = card.cortex.context_length if card.cortex is not None else 0
    return gm.Model(
        name=f"models/{card.id}",
        base_model_id=card.id,
        version="cortex",
        display_name=card.id,
        description=f"{card.id}, served by cortex",
        input_token_limit=context_length,
        output_token_limit=context_length,
        supported_generation_methods=list(EMBEDDING_METHODS if embed else GENERATION_METHODS),
    )


async def list_models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    return _json(gm.ModelList([_model(gateway, card) for card in admin.cards(gateway)]))


async def get_model(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    resolved = gateway.resolve(request.match_info["target"].removeprefix("models/"))
    for card in admin.cards(gateway):
        if card.id == resolved.model_id:
            return _json(_model(gateway, card))
    raise NotFound(f"models/{resolved.model_id} is not served now (no live node can load it)")


def _resolve(gateway: Gateway, request: web.Request) -> tuple[Resolved, str]:
    """The resolved model and the name the client used (echoed as ``modelVersion``)."""
    name, _ = _target(request)
    return gateway.resolve(name), name


async def generate(gateway: Gateway, request: web.Request, ex: Exchange) -> web.StreamResponse:
    return await _generation(gateway, request, ex, stream=False)


async def stream_generate(
    gateway: Gateway, request: web.Request, ex: Exchange
) -> web.StreamResponse:
    return await _generation(gateway, request, ex, stream=True)


async def _generation(
    gateway: Gateway, request: web.Request, ex: Exchange, stream: bool
) -> web.StreamResponse:
    resolved, name = _resolve(gateway, request)
    req = gm.decode(await request.read(), gm.GenerateContentRequest)
    ex.stream = stream
    neuron = resolved.entry is not None
    chat = to_openai(req, resolved.model_id, accepts_images(resolved), neuron, stream)
    ex.session = session_key(request.headers, None, chat.messages)
    upstream = await gateway.open(resolved, "/chat/completions", _encoder.encode(chat), ex)
    try:
        if not stream:
            return _json(reply(await read_completion(upstream, ex), name))
        sse_framing = request.query.get("alt") == "sse"
        writer = GeminiStreamWriter(name, new_response_id(), sse_framing)
        headers = SSE_HEADERS if sse_framing else ARRAY_HEADERS
        return await relay_stream(gateway, request, upstream, ex, writer, headers)
    finally:
        upstream.close()


async def count_tokens(gateway: Gateway, request: web.Request, ex: Exchange) -> web.Response:
    resolved, _ = _resolve(gateway, request)
    req = gm.decode(await request.read(), gm.CountTokensRequest)
    inner = req.generate_content_request or gm.GenerateContentRequest(contents=req.contents or [])
    chat = to_openai(inner, resolved.model_id, accepts_images(resolved), False, False)
    body = TokenizeRequest(model=resolved.model_id, messages=chat.messages, tools=chat.tools)
    count = await count_prompt(gateway, resolved, _encoder.encode(body), ex)
    return _json(gm.CountTokensResponse(total_tokens=count))


async def embed(gateway: Gateway, request: web.Request, ex: Exchange) -> web.StreamResponse:
    """``:embedContent`` and ``:batchEmbedContents``, as one /v1/embeddings request."""
    resolved, _ = _resolve(gateway, request)
    body = await request.read()
    if _target(request)[1] == "embedContent":
        requests = [gm.decode(body, gm.EmbedContentRequest)]
    else:
        requests = gm.decode(body, gm.BatchEmbedContentsRequest).requests
    oa_req = embed_to_openai(requests, resolved.model_id, lambda n: gateway.resolve(n).model_id)
    values = [
        gm.ContentEmbedding(values=v)
        for v in embeddings.vectors(await embeddings.fetch(gateway, resolved, oa_req, ex))
    ]
    if _target(request)[1] == "embedContent":
        return _json(gm.EmbedContentResponse(embedding=values[0]))
    return _json(gm.BatchEmbedContentsResponse(embeddings=values))


def add_routes(app: web.Application, exchange: Wrap) -> None:
    """Register the Gemini routes; ``exchange`` wraps the generation handlers so each is
    accounted like every other exchange (app._exchange_handler)."""
    route = "/v1beta/models/{model}"
    by_method: dict[str, Handler] = {
        "generateContent": exchange("gemini", route + ":generateContent", generate),
        "streamGenerateContent": exchange(
            "gemini", route + ":streamGenerateContent", stream_generate
        ),
        "countTokens": exchange("gemini", route + ":countTokens", count_tokens),
        "embedContent": exchange("gemini", route + ":embedContent", embed),
        "batchEmbedContents": exchange("gemini", route + ":batchEmbedContents", embed),
    }

    async def dispatch(request: web.Request) -> web.StreamResponse:
        return await by_method[_target(request)[1]](request)

    app.router.add_get("/v1beta/models", list_models)
    app.router.add_get("/v1beta/models/{target}", get_model)
    app.router.add_post("/v1beta/models/{target}", dispatch)
