"""HTTP handlers: decode with ``protocol.decode``, call the node, encode with msgspec.

Errors are raised as CortexError and rendered by the one error middleware in app.py.
"""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from cortex.neuron import completions, embeddings, metrics, text_completions
from cortex.neuron.node import NODE
from cortex.neuron.prompt import template_messages, template_tools
from cortex.protocol import decode, openai
from cortex.protocol.neuron import (
    HealthResponse,
    LoadRequest,
    TokenizeRequest,
    TokenizeResponse,
    UnloadRequest,
)

_encoder = msgspec.json.Encoder()


def _json(value: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(value), status=status, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return _json(HealthResponse(name=request.app[NODE].config.neuron.name))


async def status(request: web.Request) -> web.Response:
    return _json(request.app[NODE].status())


async def models(request: web.Request) -> web.Response:
    node = request.app[NODE]
    cards = [
        openai.ModelCard(
            id=slot.request.model,
            created=int(slot.loaded_at or 0),
            cortex=openai.CortexModelInfo(
                state="resident", nodes=[node.config.neuron.name], context_length=context
            ),
        ).sized(context)
        for slot in node.manager.resident()
        for context in [slot.model.context_length if slot.model else 0]
    ]
    return _json(openai.ModelList(data=cards))


async def load(request: web.Request) -> web.Response:
    body = decode(await request.read(), LoadRequest)
    return _json(await request.app[NODE].manager.load(body))


async def unload(request: web.Request) -> web.Response:
    body = decode(await request.read(), UnloadRequest)
    return _json(await request.app[NODE].manager.unload(body))


async def tokenize(request: web.Request) -> web.Response:
    """Token count of a chat with the model's own template (generation prompt included)."""
    body = decode(await request.read(), TokenizeRequest)
    model = request.app[NODE].manager.model(body.model)
    messages = template_messages(body.messages, vision=False)
    ids = await asyncio.to_thread(model.encode_chat, messages, template_tools(body.tools))
    return _json(
        TokenizeResponse(model=body.model, count=len(ids), max_model_len=model.context_length)
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await completions.handle(request, request.app[NODE].manager)


async def text_completion(request: web.Request) -> web.StreamResponse:
    return await text_completions.handle(request, request.app[NODE].manager)


async def embed(request: web.Request) -> web.Response:
    return await embeddings.handle(request, request.app[NODE].manager)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/status", status)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/models/load", load)
    app.router.add_post("/models/unload", unload)
    app.router.add_post("/v1/tokenize", tokenize)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", text_completion)
    app.router.add_post("/v1/embeddings", embed)
    app.router.add_get("/metrics", metrics.handler)  # behind the token, like every route
