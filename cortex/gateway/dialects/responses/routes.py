"""POST /v1/responses: the OpenAI Responses dialect (Codex CLI's) over OpenAI chat neurons.

All shape translation is in translate.py and stream.py; this module only
wires it to the request core. ``prompt_cache_key`` (Codex sends its thread id), else ``user``,
is the session key that keeps a conversation on the node holding its prefix cache.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from cortex.gateway.core import Gateway
from cortex.gateway.dialects.responses.stream import ResponsesStreamTranslator
from cortex.gateway.dialects.responses.translate import (
    openai_to_response,
    response_skeleton,
    responses_to_openai,
)
from cortex.gateway.exchange import Exchange
from cortex.gateway.relay import accepts_images, read_completion, relay_stream
from cortex.gateway.sessions import session_key
from cortex.protocol.responses import decode_request

_encoder = msgspec.json.Encoder()


async def create(gateway: Gateway, request: web.Request, ex: Exchange) -> web.StreamResponse:
    req = decode_request(await request.read())
    ex.stream = req.stream
    resolved = gateway.resolve(req.model)
    neuron = resolved.entry is not None
    chat = responses_to_openai(req, resolved.model_id, accepts_images(resolved), neuron)
    ex.session = session_key(request.headers, req.prompt_cache_key or req.user, chat.messages)
    upstream = await gateway.open(resolved, "/chat/completions", _encoder.encode(chat), ex)
    skeleton = response_skeleton(req)
    try:
        if not req.stream:
            reply = openai_to_response(await read_completion(upstream, ex), skeleton)
            return web.Response(body=_encoder.encode(reply), content_type="application/json")
        translator = ResponsesStreamTranslator(skeleton)
        return await relay_stream(gateway, request, upstream, ex, translator)
    finally:
        upstream.close()
