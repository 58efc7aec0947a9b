"""POST /v1/chat/completions: the OpenAI path, relayed byte for byte (``forward``, which
POST /v1/completions shares: text_completions.py).

The body is decoded once (validation at the edge). It is forwarded unchanged when the model
name is already a catalogue id and usage is already requested; otherwise it is re-encoded once
with the resolved id and ``stream_options.include_usage`` forced on, so that token counts are
always known. The usage-only chunk is removed again when the client did not ask for it.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from cortex import protocol
from cortex.errors import CortexError, InvalidRequest
from cortex.gateway.core import Gateway, Resolved
from cortex.gateway.exchange import Exchange
from cortex.gateway.proxy import (
    read_json,
    relay_events,
    sse_error,
)
from cortex.gateway.relay import relay
from cortex.gateway.sessions import session_key
from cortex.protocol import openai
from cortex.protocol.completions import CompletionRequest

_encoder = msgspec.json.Encoder()
_FORCED_USAGE = openai.StreamOptions(include_usage=True)


OpenAIRequest = openai.ChatCompletionRequest | CompletionRequest


def upstream_body(raw: bytes, req: OpenAIRequest, model_id: str) -> bytes:
    """The bytes to send upstream: the client's own when nothing needs to change."""
    if req.model == model_id and (not req.stream or req.wants_usage_chunk):
        return raw
    fixed = msgspec.structs.replace(
        req,
        model=model_id,
        stream_options=_FORCED_USAGE if req.stream else req.stream_options,
    )
    return _encoder.encode(fixed)


def _refuse_images(req: openai.ChatCompletionRequest, model_id: str) -> None:
    """models.toml says the model takes no images: a clear 400 here, not a template error."""
    for i, message in enumerate(req.messages):
        content = getattr(message, "content", None)
        if isinstance(content, list) and any(isinstance(p, openai.ImagePart) for p in content):
            raise InvalidRequest(
                f"model {model_id} does not accept images", param=f"messages[{i}].content"
            )


async def chat_completions(
    gateway: Gateway, request: web.Request, ex: Exchange
) -> web.StreamResponse:
    raw = await request.read()
    req = protocol.decode(raw, openai.ChatCompletionRequest)
    ex.stream = req.stream
    resolved = gateway.resolve(req.model)
    if resolved.entry is not None and not resolved.entry.vision:
        _refuse_images(req, resolved.model_id)
    ex.session = session_key(request.headers, req.user, req.messages)
    return await forward(gateway, request, ex, resolved, "/chat/completions", raw, req)


async def forward(
    gateway: Gateway,
    request: web.Request,
    ex: Exchange,
    resolved: Resolved,
    path: str,
    raw: bytes,
    req: OpenAIRequest,
) -> web.StreamResponse:
    """Route and relay an OpenAI request that the neuron answers in the same dialect (chat and
    text completions): the JSON as it is, or the SSE bytes as they come."""
    body = upstream_body(raw, req, resolved.model_id)
    upstream = await gateway.open(resolved, path, body, ex)
    try:
        if not req.stream:
            data = await read_json(upstream, ex)
            return web.Response(body=data, content_type="application/json")
        return await relay(gateway, request, upstream, ex, _BytesRelay(ex, req.wants_usage_chunk))
    finally:
        upstream.close()


class _BytesRelay:
    """OpenAI clients get the upstream's bytes as they are (usage noted, the usage-only chunk
    dropped when they did not ask for it)."""

    def __init__(self, ex: Exchange, keep_usage: bool) -> None:
        self._ex, self._keep_usage = ex, keep_usage

    def batch(self, raw: bytes) -> bytes:
        return relay_events(raw, self._ex, self._keep_usage)

    def finish(self) -> bytes:
        return b""  # the upstream's own [DONE] was relayed

    def error(self, err: CortexError) -> bytes:
        return sse_error(err)
