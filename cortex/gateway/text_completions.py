"""POST /v1/completions: editors' autocomplete and fill-in-the-middle, relayed like chat.

Decoded once at the edge (one prompt per request, refused fields named), routed with affinity on
the head of the prompt (an editor resends the same file, edited near the cursor, so its start is
stable and the node that served the last request holds it in cache) and relayed byte for byte by
``chat.forward``. The model's task is checked before routing (Gateway.open): an embedding model
gets a 400, not a load.
"""

from __future__ import annotations

from aiohttp import web

from cortex import protocol
from cortex.gateway.chat import forward
from cortex.gateway.core import Gateway
from cortex.gateway.exchange import Exchange
from cortex.gateway.sessions import prompt_session_key
from cortex.protocol.completions import CompletionRequest


async def create(gateway: Gateway, request: web.Request, ex: Exchange) -> web.StreamResponse:
    raw = await request.read()
    req = protocol.decode(raw, CompletionRequest)
    ex.stream = req.stream
    resolved = gateway.resolve(req.model)
    ex.session = prompt_session_key(request.headers, req.user, req.single_prompt)
    return await forward(gateway, request, ex, resolved, "/completions", raw, req)
