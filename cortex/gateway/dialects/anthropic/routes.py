"""POST /v1/messages and /v1/messages/count_tokens: the Anthropic dialect over OpenAI neurons.

All shape translation is in translate.py and stream.py; this module only wires it to the
request core.
``max_tokens`` is a ceiling (the neuron caps it at what the context leaves); only a prompt that
does not fit is refused, in Anthropic's own words ("prompt is too long: N tokens > M maximum"),
since Claude Code reacts to that message by compacting the conversation.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict

import aiohttp
import msgspec
from aiohttp import web

from cortex import protocol
from cortex.errors import InvalidRequest, UpstreamError
from cortex.gateway.core import Gateway, Resolved
from cortex.gateway.dialects.anthropic.stream import AnthropicStreamTranslator
from cortex.gateway.dialects.anthropic.translate import (
    messages_to_openai,
    new_message_id,
    openai_to_messages,
)
from cortex.gateway.exchange import Exchange
from cortex.gateway.proxy import UpstreamResponse
from cortex.gateway.relay import accepts_images, read_completion, relay_stream
from cortex.gateway.sessions import session_key
from cortex.protocol import anthropic, openai
from cortex.protocol.neuron import TokenizeRequest, TokenizeResponse

log = logging.getLogger("cortex.gateway")
TOKENIZE_PATH = "/tokenize"  # the neuron's /v1/tokenize
_encoder = msgspec.json.Encoder()
_tokenize_decoder = msgspec.json.Decoder(TokenizeResponse)
# A context error's numbers: the context and the prompt's own size, in cortex's (and OpenAI's)
# wording, vLLM's "your request has N input tokens" (the prompt overflows) or "... tokens and
# your request has N input tokens" (prompt + max_tokens overflow), or vLLM's older "you
# requested T tokens (N in the messages, K in the completion)".
_CONTEXT = re.compile(
    r"maximum context length is (\d+) tokens(?:\. However, (?:your messages resulted in (\d+)"
    r"|your request has (\d+) input|you requested \d+ tokens \((\d+) in the messages)"
    r"| and your request has (\d+) input)"
)
COUNT_CACHE_SIZE = 4096
_PATH = "/chat/completions"


def _sizes(err: InvalidRequest) -> tuple[int, int] | None:
    """(context length, prompt tokens) when ``err`` is a context error that names them."""
    match = _CONTEXT.search(err.message)
    if match is None:
        return None
    return int(match[1]), int(next(g for g in match.groups()[1:] if g))


def as_prompt_too_long(err: InvalidRequest) -> InvalidRequest:
    """Anthropic's "prompt is too long: N tokens > M maximum" (the words Claude Code compacts
    on) when the prompt alone overflows; any other error passes through unchanged."""
    sizes = _sizes(err)
    if sizes is None or sizes[1] < sizes[0]:
        return err
    return InvalidRequest(f"prompt is too long: {sizes[1]} tokens > {sizes[0]} maximum")


async def _open(
    gateway: Gateway, resolved: Resolved, oa_req: openai.ChatCompletionRequest, ex: Exchange
) -> UpstreamResponse:
    """Send upstream. ``max_tokens`` is a ceiling: an upstream that refuses prompt + max_tokens
    while the prompt fits (vLLM does; cortex's neurons cap it themselves) is asked once more,
    for what its context leaves. Nothing has reached the client, so the retry is invisible."""
    try:
        return await gateway.open(resolved, _PATH, _encoder.encode(oa_req), ex)
    except InvalidRequest as err:
        sizes = _sizes(err)
        room = 0 if sizes is None else sizes[0] - sizes[1]
        if not 0 < room < (oa_req.max_tokens or 0):
            raise as_prompt_too_long(err) from None
    capped = msgspec.structs.replace(oa_req, max_tokens=room)
    try:
        return await gateway.open(resolved, _PATH, _encoder.encode(capped), ex)
    except InvalidRequest as err:
        raise as_prompt_too_long(err) from None


async def create(gateway: Gateway, request: web.Request, ex: Exchange) -> web.StreamResponse:
    raw = await request.read()
    req = protocol.decode(raw, anthropic.MessagesRequest)
    ex.stream = req.stream
    resolved = gateway.resolve(req.model)
    oa_req = messages_to_openai(req, resolved.model_id, accepts_images(resolved))
    ex.session = session_key(request.headers, oa_req.user, oa_req.messages)
    upstream = await _open(gateway, resolved, oa_req, ex)
    try:
        if not req.stream:
            completion = await read_completion(upstream, ex)
            matched = completion.choices[0].stop_reason if completion.choices else None
            reply = openai_to_messages(completion, req.model, matched)
            return web.Response(body=_encoder.encode(reply), content_type="application/json")
        translator = AnthropicStreamTranslator(req.model, new_message_id())
        return await relay_stream(gateway, request, upstream, ex, translator)
    finally:
        upstream.close()


class CountCache:
    """Claude Code calls count_tokens in bursts with the same body: answer repeats from memory."""

    def __init__(self, size: int = COUNT_CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[bytes, int] = OrderedDict()

    def get(self, key: bytes) -> int | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes, value: int) -> None:
        self._items[key] = value
        if len(self._items) > self._size:
            self._items.popitem(last=False)


COUNT_CACHE: web.AppKey[CountCache] = web.AppKey("count_cache", CountCache)


async def count_tokens(gateway: Gateway, request: web.Request, ex: Exchange) -> web.Response:
    """The prompt's tokens with the model's own template; never ``max_tokens`` (it has none)
    and never a refusal for length: a client counts precisely to learn whether it fits. An
    exchange like any other: routed with the session's affinity, logged and metered."""
    cache = request.app[COUNT_CACHE]
    req = protocol.decode(await request.read(), anthropic.CountTokensRequest)
    resolved = gateway.resolve(req.model)
    ex.model = resolved.model_id
    as_messages = anthropic.MessagesRequest(
        model=req.model, messages=req.messages, max_tokens=1, system=req.system, tools=req.tools
    )
    oa_req = messages_to_openai(as_messages, resolved.model_id, accepts_images(resolved))
    ex.session = session_key(request.headers, oa_req.user, oa_req.messages)
    body = TokenizeRequest(model=resolved.model_id, messages=oa_req.messages, tools=oa_req.tools)
    encoded = _encoder.encode(body)  # after prefix hygiene: per-request noise misses no cache
    key = hashlib.blake2b(encoded, digest_size=16).digest()
    count = cache.get(key)
    if count is None:
        count = await count_prompt(gateway, resolved, encoded, ex)
        cache.put(key, count)
    return web.Response(
        body=_encoder.encode(anthropic.CountTokensResponse(count)), content_type="application/json"
    )


async def count_prompt(gateway: Gateway, resolved: Resolved, body: bytes, ex: Exchange) -> int:
    """``body``: an encoded TokenizeRequest, sent through ``Gateway.open`` like a generation
    (routed, counted in flight, retried before the first byte; the caller's exchange handler
    logs and meters it). It may load the model, as a generation would."""
    if resolved.entry is None:
        # A plain upstream has no tokenizer endpoint: about four bytes a token.
        ex.model = resolved.model_id
        return max(1, len(body) // 4)
    upstream = await gateway.open(resolved, TOKENIZE_PATH, body, ex)
    try:
        raw = await upstream.resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("node %s could not count tokens: %r", ex.node, exc)
        raise UpstreamError(f"node {ex.node} could not count tokens") from None
    finally:
        upstream.close()
    ex.upstream_done = time.perf_counter()
    try:
        return _tokenize_decoder.decode(raw).count
    except msgspec.DecodeError:
        raise UpstreamError(f"node {ex.node} sent a token count that is not JSON") from None
