"""Forwarding one chat completion to a neuron or upstream, and relaying the answer.

The OpenAI path relays bytes: upstream SSE chunks are written to the client as they arrive,
never decoded or re-encoded, except the final usage event, which is parsed (so metrics always
know the tokens: the gateway forces ``stream_options.include_usage`` upstream) and dropped again
when the client did not ask for it. Retries happen only before anything reached the client.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import msgspec
from yarl import URL

from cortex import sse
from cortex.errors import CortexError, UpstreamError, from_body, from_event, openai_body
from cortex.gateway.exchange import Exchange, TokenCounts
from cortex.protocol import openai

# An SSE event carrying a usage object (OpenAI sends "usage":null on every other chunk).
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
# A chunk that carries generated output (the first chunk's empty "content":"" does not count);
# "text" is a /v1/completions chunk's.
_TOKEN = re.compile(rb'"(?:content|text)"\s*:\s*"[^"]|"tool_calls"\s*:\s*\[')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_DONE = sse.DONE_EVENT

log = logging.getLogger("cortex.gateway.proxy")


class _UsageOnly(msgspec.Struct):
    usage: TokenCounts | None = None


_usage_decoder = msgspec.json.Decoder(_UsageOnly)
_error_decoder = msgspec.json.Decoder()


@dataclass(frozen=True)
class Target:
    """Where a request goes: a neuron's or an upstream's URL for one route, and the headers
    sent with every request there (content type and key). Shared: never changed."""

    node: str
    url: URL
    headers: Mapping[str, str]
    is_neuron: bool


class NodeDown(Exception):
    """The fleet marked the target node down while its answer's first byte was awaited."""


class UpstreamResponse:
    """An open upstream response whose status and headers arrived (no body byte relayed yet)."""

    def __init__(self, resp: aiohttp.ClientResponse, target: Target) -> None:
        self.resp = resp
        self.target = target

    async def error(self) -> CortexError:
        raw = await self.resp.read()
        self.resp.release()
        err = from_body(self.resp.status, raw)
        err.retry_after_s = _retry_after(self.resp.headers.get("retry-after"))
        return err

    def close(self) -> None:
        """Done with it: a fully read answer goes back to the pool (keep-alive); anything
        else drops the connection, so the neuron sees the hang-up at once and cancels."""
        if self.resp.content.is_eof():
            self.resp.release()
        else:
            self.resp.close()


def _retry_after(value: str | None) -> float | None:
    """A neuron's 429 carries Retry-After; relay it (seconds only, as cortex sends it)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


async def open_upstream(
    session: aiohttp.ClientSession,
    target: Target,
    body: bytes,
    timeout: aiohttp.ClientTimeout,
) -> UpstreamResponse:
    """POST and wait for the status line. Connection failures raise aiohttp/Timeout errors,
    which the caller may retry on another node: nothing has reached the client yet."""
    resp = await session.post(target.url, data=body, headers=target.headers, timeout=timeout)
    return UpstreamResponse(resp, target)


async def read_json(upstream: UpstreamResponse, exchange: Exchange) -> bytes:
    """The whole non-stream answer, with its usage noted."""
    try:
        raw = await upstream.resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _failed(upstream, "mid-answer", exc) from None
    finally:
        upstream.resp.release()
    exchange.upstream_done = time.perf_counter()
    exchange.first_token = exchange.upstream_done
    try:
        exchange.take_usage(_usage_decoder.decode(raw).usage)
    except msgspec.DecodeError:
        raise UpstreamError(f"{upstream.target.node} sent a body that is not JSON") from None
    return raw


async def sse_events(upstream: UpstreamResponse) -> AsyncIterator[bytes]:
    """Complete SSE events (each ending in a blank line) as soon as they arrive, in batches.

    Yields byte strings holding one or more whole events; raises UpstreamError when the
    upstream dies or stays silent past the request's sock_read timeout. The client sees only
    "node N failed mid-stream"; what happened goes to the log.
    """
    pending = b""
    content = upstream.resp.content
    # Our neurons frame canonically and their bytes are relayed as they are; anything else is
    # read by the spec's rules (re-framed where it differs), so the code after this sees one
    # framing.
    reframer = None if upstream.target.is_neuron else sse.Reframer()
    while True:
        try:
            data = await content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failed(upstream, "mid-stream", exc) from None
        if not data:
            cut_off = reframer.pending if reframer is not None else bool(pending.strip())
            what = "ended mid-event" if cut_off else "closed the stream before [DONE]"
            raise _failed(upstream, "mid-stream", what)
        if reframer is not None:
            if framed := reframer.feed(data):
                yield framed
            if reframer.done:
                await _drain(content)
                return
            continue
        if pending:
            data = pending + data
        cut = data.rfind(b"\n\n")
        if cut < 0:
            pending = data
            continue
        pending = data[cut + 2 :]
        whole = data[: cut + 2]
        if whole.endswith(_DONE):
            # A neuron ends its body right after [DONE]: read that end before the client sees
            # [DONE], or a client that closes on it (openai's sync SDK) cancels this handler
            # mid-drain and a finished stream is counted a hang-up (499).
            await _drain(content)
            yield whole
            return
        yield whole


async def _drain(content: aiohttp.StreamReader) -> None:
    """Read the end of the body after [DONE] so the connection can be reused."""
    try:
        while await content.readany():
            pass
    except (aiohttp.ClientError, TimeoutError):
        pass  # close() drops a connection that did not end cleanly


def _failed(upstream: UpstreamResponse, where: str, cause: BaseException | str) -> UpstreamError:
    """The error a client sees names the node only; the cause (exception text) is logged."""
    detail = "went silent (idle_timeout_s)" if isinstance(cause, TimeoutError) else cause
    log.warning("node %s failed %s: %r", upstream.target.node, where, detail)
    return UpstreamError(f"node {upstream.target.node} failed {where}")


def relay_events(batch: bytes, exchange: Exchange, keep_usage: bool) -> bytes:
    """Note first token and usage; drop the usage-only event if the client did not ask."""
    if outputs := output_count(batch):
        exchange.output_chunks += outputs
        if exchange.first_token is None:
            exchange.first_token = time.perf_counter()
    if not holds_usage(batch):
        return batch
    if b"\n\n\n" in batch or batch.startswith(b"\n\n") or not batch.endswith(b"\n\n"):
        return _usage_by_event(batch, exchange, keep_usage)
    # Whole events, no empty ones: visit only the events the usage matches fall in, and keep
    # the bytes around them as they are (a stream's usage event is one of some seventy).
    out = []
    kept = 0  # batch[kept:] is not yet in out
    seen = -1  # start of the last event whose usage was taken
    for match in _USAGE.finditer(batch):
        start = batch.rfind(b"\n\n", 0, match.start()) + 2
        start = 0 if start < 2 else start
        if start == seen:
            continue
        seen = start
        end = batch.find(b"\n\n", match.end()) + 2
        event = batch[start : end - 2]
        _take_usage(event, exchange)
        if not keep_usage and _EMPTY_CHOICES.search(event):
            out.append(batch[kept:start])
            kept = end
    if not out:
        return batch
    out.append(batch[kept:])
    return b"".join(out)


def _usage_by_event(batch: bytes, exchange: Exchange, keep_usage: bool) -> bytes:
    """``relay_events``' usage step for any batch: event by event, empty events dropped."""
    out = []
    for event in batch.split(b"\n\n"):
        if not event:
            continue
        if _USAGE.search(event):
            _take_usage(event, exchange)
            if not keep_usage and _EMPTY_CHOICES.search(event):
                continue
        out.append(event)
        out.append(b"\n\n")
    return b"".join(out)


def _take_usage(event: bytes, exchange: Exchange) -> None:
    payload = event[event.find(b"{") :]
    with contextlib.suppress(msgspec.DecodeError):
        exchange.take_usage(_usage_decoder.decode(payload).usage)


def output_count(batch: bytes) -> int:
    """How many times ``_TOKEN`` matches ``batch``, by ``bytes.count`` (several times faster
    than the regex over a stream) when the JSON is compact: every ``"content"`` followed by
    ``:"`` and no ``"text"`` or ``"tool_calls"``, as neurons, OpenAI and vLLM write it. In
    JSON a quoted word is a whole string token (quotes inside strings are escaped), so the
    counts are exact; anything else takes the regex."""
    if b'"text"' in batch or b'"tool_calls"' in batch:
        return len(_TOKEN.findall(batch))
    keys = batch.count(b'"content"')
    strings = batch.count(b'"content":"') if keys else 0
    if strings != keys:
        return len(_TOKEN.findall(batch))
    return strings - batch.count(b'"content":""') if strings else 0


def holds_usage(batch: bytes) -> bool:
    """Whether ``_USAGE`` matches: not when every ``"usage"`` is ``"usage":null`` (OpenAI sends
    that on each chunk before the last), without running the regex."""
    keys = batch.count(b'"usage"')
    if not keys or keys == batch.count(b'"usage":null'):
        return False
    return _USAGE.search(batch) is not None


def sse_error(err: CortexError) -> bytes:
    """An OpenAI-style error event followed by the end of the stream."""
    return sse.frame(openai_body(err)) + _DONE


def decode_chunks(batch: bytes) -> list[openai.ChatCompletionChunk]:
    """Parse the chunks of a batch (the Anthropic path needs them typed); skips [DONE]."""
    chunks = []
    for event in batch.split(b"\n\n"):
        start = event.find(b"data:")
        if start < 0:
            continue
        payload = event[start + 5 :].strip()
        if payload == b"[DONE]" or not payload:
            continue
        if payload.startswith(b'{"error"'):
            detail = _error_decoder.decode(payload)["error"]
            raise from_event(detail if isinstance(detail, dict) else {"message": str(detail)})
        chunks.append(_chunk_decoder.decode(payload))
    return chunks


_chunk_decoder = msgspec.json.Decoder(openai.ChatCompletionChunk)
