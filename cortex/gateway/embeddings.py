"""POST /v1/embeddings: indexers' and RAG's vectors, routed like chat and relayed as JSON.

A whole list of inputs goes to one node as one request (the neuron batches it). Affinity does
not matter (no KV cache), so the router's least-loaded choice stands. The model's task is
checked before routing (Gateway.open): a chat model gets a 400 naming its task, not a load.
``fetch`` and ``vectors`` serve the dialects (Ollama's /api/embed, Gemini's :embedContent),
which build the request and shape the answer their own way.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from cortex import protocol
from cortex.errors import UpstreamError
from cortex.gateway.core import EMBEDDINGS_PATH, Gateway, Resolved
from cortex.gateway.exchange import Exchange
from cortex.gateway.proxy import read_json
from cortex.protocol.embeddings import EmbeddingList, EmbeddingRequest

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(EmbeddingList)


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


async def fetch(
    gateway: Gateway, resolved: Resolved, req: EmbeddingRequest, ex: Exchange
) -> EmbeddingList:
    """Send a request a dialect built (float vectors) and read the whole answer."""
    upstream = await gateway.open(resolved, EMBEDDINGS_PATH, _encoder.encode(req), ex)
    try:
        raw = await read_json(upstream, ex)
    finally:
        upstream.close()
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"{ex.node} sent embeddings cortex cannot read: {exc}") from None


def vectors(answer: EmbeddingList) -> list[list[float]]:
    """The vectors in input order; float lists, as every dialect asks for."""
    out: list[list[float]] = []
    for item in sorted(answer.data, key=lambda d: d.index):
        if isinstance(item.embedding, str):
            raise UpstreamError("upstream sent base64 embeddings where floats were asked for")
        out.append(item.embedding)
    return out
