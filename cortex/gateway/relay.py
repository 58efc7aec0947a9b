"""Relaying a neuron's chat completion to a client that speaks another dialect.

Neurons answer in OpenAI chat completions only; the Anthropic (messages.py) and Responses
(responses.py) handlers translate. What they share lives here: reading a whole completion, and
driving a ``StreamTranslator`` over the upstream SSE stream with the exchange's accounting (first
token, usage, the stop string that ended it) and the one rule for failures once headers are out:
the translator renders them as its dialect's error event, the HTTP status stays 200.
"""

from __future__ import annotations

import time
from typing import Protocol

import msgspec
from aiohttp import web

from cortex.errors import CortexError, UpstreamError
from cortex.gateway.chat import SSE_HEADERS
from cortex.gateway.core import Gateway, Resolved
from cortex.gateway.proxy import Exchange, UpstreamResponse, decode_chunks, read_json, sse_events
from cortex.protocol import openai

_completion_decoder = msgspec.json.Decoder(openai.ChatCompletion)


class StreamTranslator(Protocol):
    """OpenAI chunks in, one dialect's SSE bytes out; after finish or error it emits nothing."""

    def feed(self, chunk: openai.ChatCompletionChunk) -> bytes: ...

    def finish(self, matched_stop: str | None) -> bytes:
        """The closing events; ``matched_stop``: the stop string the output ended on."""
        ...

    def error(self, err: CortexError) -> bytes:
        """The events ending a failed stream."""
        ...


def accepts_images(resolved: Resolved) -> bool:
    """models.toml's ``vision``; a plain upstream decides for itself."""
    return resolved.entry.vision if resolved.entry is not None else True


async def read_completion(upstream: UpstreamResponse, ex: Exchange) -> openai.ChatCompletion:
    """The whole non-stream answer, typed, with its usage noted on the exchange."""
    return _completion_decoder.decode(await read_json(upstream, ex))


async def relay_stream(
    gateway: Gateway,
    request: web.Request,
    upstream: UpstreamResponse,
    ex: Exchange,
    translator: StreamTranslator,
) -> web.StreamResponse:
    """Stream the upstream's answer to the client through ``translator``."""
    response = web.StreamResponse(headers={**SSE_HEADERS, "request-id": ex.request_id})
    await response.prepare(request)
    matched: str | None = None
    try:
        async for batch in sse_events(upstream):
            out = []
            for chunk in decode_chunks(batch):
                if ex.first_token is None and any(
                    c.delta.content or c.delta.tool_calls for c in chunk.choices
                ):
                    ex.first_token = time.perf_counter()
                ex.take_usage(chunk.usage)
                matched = next((c.stop_reason for c in chunk.choices if c.stop_reason), matched)
                out.append(translator.feed(chunk))
            if out:
                await response.write(b"".join(out))
        ex.upstream_done = time.perf_counter()
        await response.write(translator.finish(matched))
    except UpstreamError as err:
        gateway.fleet.mark_suspect(ex.node, err.message)
        ex.status, ex.error = err.status, err.message
        await response.write(translator.error(err))
    except CortexError as err:
        ex.status, ex.error = err.status, err.message
        await response.write(translator.error(err))
    await response.write_eof()
    return response
