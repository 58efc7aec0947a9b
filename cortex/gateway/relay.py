"""Relaying a neuron's chat completion to a client that speaks another dialect.

Neurons answer in OpenAI chat completions only; the Anthropic, Responses, Ollama and Gemini
handlers (dialects/) translate. What they share lives here:
reading a whole completion, and driving a ``StreamTranslator`` over the upstream SSE stream with
the exchange's accounting (first token, usage, the stop string that ended it) and the one rule
for failures once headers are out: the translator renders them as its dialect's error event, the
HTTP status stays 200.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

import msgspec
from aiohttp import web

from cortex.errors import CortexError, UpstreamError
from cortex.gateway.core import Gateway, Resolved
from cortex.gateway.exchange import Exchange
from cortex.gateway.proxy import UpstreamResponse, decode_chunks, read_json, sse_events
from cortex.protocol import openai

_completion_decoder = msgspec.json.Decoder(openai.ChatCompletion)
SSE_HEADERS = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
}


class StreamTranslator(Protocol):
    """OpenAI chunks in, one dialect's SSE bytes out; after finish or error it emits nothing."""

    def feed(self, chunk: openai.ChatCompletionChunk) -> bytes: ...

    def finish(self, matched_stop: str | None) -> bytes:
        """The closing events; ``matched_stop``: the stop string the output ended on."""
        ...

    def error(self, err: CortexError) -> bytes:
        """The events ending a failed stream."""
        ...

    def keepalive(self) -> bytes:
        """What tells the client the stream is alive while the upstream is silent (a long
        prompt's prefill); b"" after finish or error."""
        ...


def accepts_images(resolved: Resolved) -> bool:
    """models.toml's ``vision``; a plain upstream decides for itself."""
    return resolved.entry.vision if resolved.entry is not None else True


async def read_completion(upstream: UpstreamResponse, ex: Exchange) -> openai.ChatCompletion:
    """The whole non-stream answer, typed, with its usage noted on the exchange."""
    return _completion_decoder.decode(await read_json(upstream, ex))


class BatchRelay(Protocol):
    """What one stream does with the upstream's SSE batches: relay them as they are (OpenAI
    clients) or translate them (``TranslatedRelay``)."""

    def batch(self, raw: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def error(self, err: CortexError) -> bytes: ...


async def relay(
    gateway: Gateway,
    request: web.Request,
    upstream: UpstreamResponse,
    ex: Exchange,
    through: BatchRelay,
    headers: Mapping[str, str] = SSE_HEADERS,
) -> web.StreamResponse:
    """The one streaming loop: headers, every batch through ``through``, its closing events or,
    once headers are out, its error events (the HTTP status stays 200). ``headers``: the
    stream's own (SSE by default; Ollama's NDJSON, Gemini's JSON array)."""
    response = web.StreamResponse(headers={**headers, "request-id": ex.request_id})
    await response.prepare(request)
    try:
        async for raw in sse_events(upstream):
            if out := through.batch(raw):
                await response.write(out)
        ex.upstream_done = time.perf_counter()
        if tail := through.finish():
            await response.write(tail)
    except UpstreamError as err:
        gateway.fleet.mark_suspect(ex.node, err.message)
        ex.status, ex.error = err.status, err.message
        await response.write(through.error(err))
    except CortexError as err:
        ex.status, ex.error = err.status, err.message
        await response.write(through.error(err))
    await response.write_eof()
    return response


class TranslatedRelay:
    """Decodes each batch's chunks, keeps the exchange's accounting (first token, usage, the
    stop string that ended it) and hands the chunks to a dialect's ``StreamTranslator``."""

    def __init__(self, ex: Exchange, translator: StreamTranslator) -> None:
        self._ex, self._translator = ex, translator
        self._matched: str | None = None

    def batch(self, raw: bytes) -> bytes:
        chunks = decode_chunks(raw)
        if not chunks:  # the neuron's heartbeat comments, sent until the first token
            return self._translator.keepalive() if _holds_comment(raw) else b""
        out = []
        for chunk in chunks:
            if any(c.delta.content or c.delta.tool_calls for c in chunk.choices):
                self._ex.output_chunks += 1
                if self._ex.first_token is None:
                    self._ex.first_token = time.perf_counter()
            self._ex.take_usage(chunk.usage)
            self._matched = next(
                (c.stop_reason for c in chunk.choices if c.stop_reason), self._matched
            )
            out.append(self._translator.feed(chunk))
        return b"".join(out)

    def finish(self) -> bytes:
        return self._translator.finish(self._matched)

    def error(self, err: CortexError) -> bytes:
        return self._translator.error(err)


def _holds_comment(raw: bytes) -> bool:
    """Whether an SSE batch holds a comment event (a line starting with a colon)."""
    return raw.startswith(b":") or b"\n:" in raw


async def relay_stream(
    gateway: Gateway,
    request: web.Request,
    upstream: UpstreamResponse,
    ex: Exchange,
    translator: StreamTranslator,
    headers: Mapping[str, str] = SSE_HEADERS,
) -> web.StreamResponse:
    """Stream the upstream's answer to the client through ``translator``."""
    return await relay(gateway, request, upstream, ex, TranslatedRelay(ex, translator), headers)
