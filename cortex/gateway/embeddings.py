"""POST /v1/embeddings: indexers' and RAG's vectors, routed like chat and relayed as JSON.

A whole list of inputs goes to one node as one request (the neuron batches it). Affinity does
not matter (no KV cache), so the router's least-loaded choice stands. The model's task is
checked before routing (Gateway.open): a chat model gets a 400 naming its task, not a load.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from cortex import protocol
from cortex.gateway.core import Gateway
from cortex.gateway.proxy import Exchange, read_json
from cortex.protocol.embeddings import EmbeddingRequest


async def create(gateway: Gateway, request: web.Request, ex: Exchange) -> web.Response:
    raw = await request.read()
    req = protocol.decode(raw, EmbeddingRequest)
    resolved = gateway.resolve(req.model)
    body = raw if req.model == resolved.model_id else _renamed(req, resolved.model_id)
    upstream = await gateway.open(resolved, "/embeddings", body, ex)
    try:
        data = await read_json(upstream, ex)
    finally:
        upstream.close()
    return web.Response(body=data, content_type="application/json")


def _renamed(req: EmbeddingRequest, model_id: str) -> bytes:
    """The body with an alias replaced by the catalogue id the neuron knows."""
    return msgspec.json.encode(msgspec.structs.replace(req, model=model_id))
