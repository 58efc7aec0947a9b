"""The HTTP edge both roles share: the error middleware, key comparison, reading a body within a
deadline, safe request ids, telling a client hang-up from a failure, and the aiohttp server's
own timeouts.

Phases and who bounds them (docs/operations.md lists the defaults):
- request head: aiohttp's keep-alive timer runs from the connection's start and from the end of
  each response until a complete head arrives, so ``keepalive_timeout_s`` bounds both an idle
  keep-alive connection and a head trickled byte by byte (slowloris);
- body: ``read_body`` reads it all before the handler runs, within ``body_timeout_s``; after an
  answer sent before the body was read (408, 401, 413), aiohttp reads and drops the rest for at
  most ``LINGER_S`` (its default, 10 s, let a trickled body hold the connection that long);
- head size: aiohttp's line and field limits (8190 bytes) answer 400.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from cortex.errors import (
    CortexError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    RequestTimeout,
)

LINGER_S = 1.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


async def read_body(request: web.Request, timeout_s: float) -> None:
    """Read (and cache) the whole body so handlers' ``request.read()`` returns at once.

    Raises RequestTimeout (408) when it does not arrive within ``timeout_s``, InvalidRequest
    (400) when it cannot be decoded (a Content-Encoding that does not match the bytes, broken
    chunking); aiohttp's 413 for a body over ``client_max_size`` passes through.
    """
    if not request.body_exists:
        return
    try:
        if request.content.is_eof():  # all of it arrived with the head: nothing to wait for
            await request.read()
        else:
            async with asyncio.timeout(timeout_s):
                await request.read()
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout_s:g} s") from None
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        raise InvalidRequest(
            f"request body could not be read ({type(exc).__name__}): check Content-Encoding "
            "and Transfer-Encoding"
        ) from None


def request_id(request: web.Request) -> str | None:
    """The client's x-request-id when it is a plain token; anything else is replaced (it is
    echoed in a response header and the log)."""
    given = request.headers.get("x-request-id")
    return given if given and _REQUEST_ID.match(given) else None


def header_bytes(value: str) -> bytes:
    """A header value as the bytes the client sent (aiohttp decodes with surrogateescape, so
    non-UTF-8 bytes survive and compare unequal instead of raising)."""
    return value.encode("utf-8", "surrogateescape")


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def log_hang_up(request: web.Request, logger: logging.Logger) -> None:
    """A client hang-up is ordinary: one INFO line, no traceback."""
    logger.info("client hung up: %s %s", request.method, request.path)


def unsent() -> web.Response:
    """What a middleware returns after a hang-up: aiohttp finds the transport closed and drops
    it quietly, where a raised ConnectionError would make it log a traceback and try a 500."""
    return web.Response(status=499)


def key_matches(given: str | None, keys: Iterable[str]) -> bool:
    """Whether ``given`` is one of ``keys``, compared in constant time against every key (so
    timing says nothing about which one is close); non-UTF-8 input simply does not match."""
    if given is None:
        return False
    raw = header_bytes(given)
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(raw, key.encode())
    return ok


Render = Callable[[web.Request, CortexError], web.Response]
FromHttp = Callable[[web.Request, web.HTTPException], CortexError]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def errors_middleware(
    render: Render, from_http: FromHttp, logger: logging.Logger, internal: str
) -> Middleware:
    """The one place a role's errors become responses (``render`` picks the envelope); see
    ``failure``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except (Exception, asyncio.CancelledError) as exc:
            return failure(request, exc, render, from_http, logger, internal)

    return middleware


def failure(
    request: web.Request,
    exc: BaseException,
    render: Render,
    from_http: FromHttp,
    logger: logging.Logger,
    internal: str,
) -> web.Response:
    """The response for what a handler raised, or ``exc`` raised again: a CortexError as
    itself, aiohttp's HTTP errors through ``from_http`` (below 400 they are raised again), a
    recursion in a chat template as a 400, anything else as a 500 saying ``internal`` with the
    traceback in the log. A client hang-up is one INFO line, and nothing is sent after it."""
    if isinstance(exc, CortexError):
        return render(request, exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return render(request, from_http(request, exc))
    if isinstance(exc, asyncio.CancelledError):
        if client_gone(request):
            log_hang_up(request, logger)
        raise exc
    if isinstance(exc, RecursionError):  # a chat template recursing into a deep value
        return render(request, InvalidRequest("request nests too deeply to render"))
    if isinstance(exc, ConnectionError) and client_gone(request):
        log_hang_up(request, logger)
        return unsent()
    logger.error("unexpected error on %s %s", request.method, request.path, exc_info=exc)
    return render(request, InternalError(internal))


def failed_status(request: web.Request, exc: BaseException, from_http: FromHttp) -> int:
    """The status ``failure`` answers ``exc`` with (499: the client hung up, nothing is sent),
    for the accounts of a handler that saw it raised."""
    if isinstance(exc, CortexError):
        return exc.status
    if isinstance(exc, web.HTTPException):
        return from_http(request, exc).status if exc.status >= 400 else exc.status
    if isinstance(exc, asyncio.CancelledError):
        return 499
    if isinstance(exc, RecursionError):
        return 400
    if isinstance(exc, ConnectionError) and client_gone(request):
        return 499  # a write found the client gone before aiohttp cancelled the handler
    return 500


def not_allowed(request: web.Request, exc: web.HTTPException) -> MethodNotAllowed:
    """aiohttp's 405 as a typed error naming the methods the route takes."""
    allowed = tuple(sorted(getattr(exc, "allowed_methods", ()) or ()))
    use = " or ".join(allowed) or "another method"
    return MethodNotAllowed(
        f"Method {request.method} is not allowed on {request.path}: use {use}.", allowed
    )


def error_response(err: CortexError, body: bytes, status: int) -> web.Response:
    """``err`` rendered as ``body``/``status`` (the envelope is the caller's), with
    Retry-After when it has one and Allow on a 405; a body timeout also closes the connection,
    since the rest of a trickled body may still be coming."""
    headers = {}
    if err.retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(err.retry_after_s)))
    if isinstance(err, MethodNotAllowed) and err.allowed:
        headers["allow"] = ", ".join(err.allowed)
    response = web.Response(
        body=body, status=status, content_type="application/json", headers=headers
    )
    if isinstance(err, RequestTimeout):
        response.force_close()
    return response


_CANNOT_BIND = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def run_server(app: web.Application, **options: Any) -> None:
    """``web.run_app``; an address it cannot listen on (taken, not this host's, a privileged
    port) ends the process with one line naming it and exit status 1, not a traceback."""
    try:
        web.run_app(app, **options)
    except OSError as exc:
        if exc.errno not in _CANNOT_BIND:
            raise
        sys.exit(f"cortex: cannot listen: {exc}")
