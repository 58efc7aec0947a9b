"""The gateway's aiohttp application: routes, the error/auth middleware, start-up and shutdown.

Which dialect a request speaks is decided by its path (``/v1/messages*`` is Anthropic, ``/api/*``
Ollama, ``/v1beta/*`` Gemini, every other route OpenAI-shaped), and every error, ours or
aiohttp's, is rendered in that dialect with a ``request-id`` header, so a client never gets a
body it cannot parse.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from cortex import config as cfg
from cortex import edge
from cortex.errors import (
    CortexError,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    anthropic_body,
    anthropic_status,
    openai_body,
)
from cortex.gateway import (
    admin,
    chat,
    embeddings,
    reload,
    text_completions,
    ui,
)
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.core import GATEWAY, Gateway
from cortex.gateway.dialects.anthropic import routes as messages
from cortex.gateway.dialects.gemini import routes as gemini
from cortex.gateway.dialects.gemini.translate import error_body as gemini_body
from cortex.gateway.dialects.ollama import routes as ollama
from cortex.gateway.dialects.responses import routes as responses
from cortex.gateway.exchange import Exchange
from cortex.gateway.fleet import Fleet
from cortex.gateway.loads import Loader
from cortex.gateway.metrics import METRICS, GatewayMetrics, listener
from cortex.gateway.neuron_client import NeuronClient
from cortex.gateway.pins import PinStore
from cortex.gateway.settings import Live

log = logging.getLogger("cortex.gateway")

REQUEST_ID = web.RequestKey("request_id", str)
POOL_IDLE_S = 15.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_OPENAI_ONLY = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


def _is_anthropic(request: web.Request) -> bool:
    """The path decides where it names a dialect: Anthropic's routes are Anthropic, OpenAI's
    own routes OpenAI whatever headers came along (an OpenAI SDK cannot parse Anthropic's
    envelope or its 529). Elsewhere (``/v1/models``, which both SDKs list, and unknown paths)
    an ``anthropic-version`` header marks an Anthropic SDK."""
    path = request.path
    if path.startswith("/v1/messages"):
        return True
    if path.startswith(_OPENAI_ONLY):
        return False
    return "anthropic-version" in request.headers


def _error_response(request: web.Request, err: CortexError) -> web.Response:
    if request.path.startswith(OLLAMA_PREFIX):
        return edge.error_response(err, ollama.error_body(err), err.status)
    if request.path.startswith(gemini.PREFIX):
        return edge.error_response(err, gemini_body(err), err.status)
    if _is_anthropic(request):
        return edge.error_response(err, anthropic_body(err), anthropic_status(err))
    return edge.error_response(err, openai_body(err), err.status)


_CLIENT_ROUTES = (
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/messages",
    "/messages/count_tokens",
    "/responses",
)


def _no_route(method: str, path: str) -> str:
    """The 404 text, with the usual base-URL mistakes named (OpenAI's ends in /v1,
    Anthropic's does not)."""
    text = f"No route for {method} {path}"
    if path.startswith("/v1/v1/"):
        return f"{text}: the base URL ends in /v1 twice (Anthropic clients take it without /v1)"
    if path in _CLIENT_ROUTES or path == "/models":
        return f"{text}: did you mean /v1{path}? An OpenAI client's base URL ends in /v1"
    return f"{text}: see docs/api.md"


def _from_http(request: web.Request, exc: web.HTTPException) -> CortexError:
    if exc.status in (404, 405):  # a client pointed at the wrong API shows up in the log
        log.info("no route: %s %s -> %d", request.method, request.path, exc.status)
    if exc.status == 404:
        return NotFound(_no_route(request.method, request.path))
    if exc.status == 413:
        return PayloadTooLarge(exc.text or "request body too large")
    if exc.status == 405:
        return edge.not_allowed(request, exc)
    return InvalidRequest(exc.text or exc.reason)


INTERNAL = "internal error; see the gateway log"
_request_ids = random.Random(secrets.randbits(64))


def _new_request_id() -> str:
    """A fresh id: unique, not a secret (it is echoed to the client and logged), so a seeded
    generator serves where ``secrets`` would cost a system call per request."""
    return f"req_{_request_ids.getrandbits(96):024x}"


def edge_middleware(live: Live) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The gateway's one middleware, in this order (one layer: each layer costs every request):

    1. a ``request-id`` on every answer (the client's own when it sent a safe one), which the
       request log line repeats;
    2. the key check (``authorize``);
    3. the whole body read within ``body_timeout_s`` (the running config's) before any
       handler runs;
    4. every error, ours or aiohttp's, rendered in the request's dialect (``edge.failure``).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = edge.request_id(request) or _new_request_id()
        request[REQUEST_ID] = request_id
        try:
            authorize(request)
            await edge.read_body(request, live.settings.config.gateway.body_timeout_s)
            response = await handler(request)
        except (Exception, asyncio.CancelledError) as exc:
            response = edge.failure(request, exc, _error_response, _from_http, log, INTERNAL)
        if not response.prepared:
            response.headers["request-id"] = request_id
        return response

    return middleware


def _key_of(request: web.Request) -> str | None:
    """Bearer, x-api-key (Anthropic's), x-goog-api-key or ``?key=`` on Gemini's routes."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    given = request.headers.get("x-api-key") or request.headers.get("x-goog-api-key")
    if given is None and request.path.startswith(gemini.PREFIX):
        return request.query.get("key")
    return given


def _loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def _refuse(request: web.Request, given: str | None, kind: str) -> Unauthorized:
    """The 401, saying what was wrong (never quoting the key), and its log line."""
    auth = request.headers.get("authorization", "").strip()
    if given is not None:
        err = Unauthorized(f"Invalid {kind} key.")
    elif auth and auth.lower() != "bearer":
        # A key sent as `Authorization: sk-...` (no scheme) or with a scheme we do not take.
        scheme = auth.split(None, 1)[0] if " " in auth else ""
        named = f"'{scheme}' is not a scheme cortex takes" if _plain_word(scheme) else "no scheme"
        err = Unauthorized(
            f"The Authorization header has {named}: send 'Authorization: Bearer KEY' "
            "(the word Bearer, a space, then the key) or 'x-api-key: KEY'."
        )
    else:
        err = Unauthorized(
            f"Missing {kind} key: send Authorization: Bearer KEY or x-api-key"
            " (Gemini clients: x-goog-api-key or ?key=)."
        )
    log.warning(
        "401 %s %s from %s: %s",
        request.method,
        request.path,
        request.remote,
        err.message,
        extra={"fields": {"id": request[REQUEST_ID], "status": 401}},
    )
    return err


def _plain_word(text: str) -> bool:
    """A scheme worth naming back (Basic, Token): short letters only, never a key."""
    return 0 < len(text) <= 16 and text.isascii() and text.isalpha()


OLLAMA_PREFIX = "/api/"
_UNGUARDED = ("/api/event_logging/batch",)  # Claude Code's telemetry, dropped unread


def _client_route(path: str) -> bool:
    """Routes behind the client keys: OpenAI's and Anthropic's (/v1/), Ollama's (/api/),
    Gemini's (/v1beta/)."""
    if path in _UNGUARDED:
        return False
    return path.startswith(("/v1/", OLLAMA_PREFIX, gemini.PREFIX))


def authorize(request: web.Request) -> None:
    """Client routes take a client or an admin key; admin routes an admin key. The key lists
    are read per request from the running config, so a SIGHUP reload rotates them."""
    section = request.app[GATEWAY].config.gateway
    path = request.path
    if section.api_keys and _client_route(path):
        given = _key_of(request)
        if not edge.key_matches(given, section.api_keys + section.admin_keys):
            raise _refuse(request, given, "API")
    if path.startswith("/cortex/"):
        if section.admin_keys:
            given = _key_of(request)
            if not edge.key_matches(given, section.admin_keys):
                raise _refuse(request, given, "admin")
        elif not _loopback(request):
            raise Forbidden("the admin API is loopback-only while admin_keys is empty")


def _exchange_handler(
    dialect: str,
    route: str,
    body: Callable[[Gateway, web.Request, Exchange], Awaitable[web.StreamResponse]],
) -> Handler:
    """Wrap a dialect handler so that every exchange is accounted once, whatever happens."""

    async def handler(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        ex = Exchange(dialect, route, request_id=request[REQUEST_ID])
        error: CortexError | None = None
        try:
            return await body(gateway, request, ex)
        except CortexError as err:
            error = err
            raise
        except BaseException as exc:  # counted with the status the client is answered with
            ex.status = edge.failed_status(request, exc, _from_http)
            ex.error = "client closed the connection" if ex.status == 499 else repr(exc)[:200]
            raise
        finally:
            gateway.finish(ex, error)

    return handler


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def root(request: web.Request) -> web.Response:
    """GET and HEAD /: Claude Code probes its base URL before the first request; a browser
    (it asks for HTML) is sent on to the dashboard, and the JSON names it too."""
    if "text/html" in request.headers.get("accept", ""):
        raise web.HTTPSeeOther("/ui")
    return web.json_response(
        {"name": "cortex", "status": "ok", "dashboard": "/ui", "api": "/v1", "docs": "docs/api.md"}
    )


async def drop_events(request: web.Request) -> web.Response:
    """POST /api/event_logging/batch: Claude Code's telemetry, accepted and dropped."""
    return web.json_response({})


def wire(
    live: Live,
    session: aiohttp.ClientSession,
    pins: PinStore | None = None,
    client: NeuronClient | None = None,
) -> Gateway:
    """The gateway's parts, connected: one ``Catalogue`` and one ``Live`` settings reference,
    shared by the fleet, the loader and the gateway. Nothing runs until ``fleet.start()``.
    ``pins``: the runtime pin file (None: memory only); ``client``: a fake in tests."""
    fleet = Fleet(live, Catalogue(live, pins), session, client)
    loader = Loader(live, fleet, session)
    fleet.on_node_up.append(loader.ensure_pinned)
    fleet.on_node_down.append(loader.node_down)
    return Gateway(live, fleet, loader, session)


def make_app(
    config: cfg.CortexConfig, models: cfg.ModelsConfig, state_path: Path | None = None
) -> web.Application:
    """The application; nothing runs until it is started (fleet polling starts in cleanup_ctx).

    ``state_path``: where runtime pins are kept across restarts (None: in memory only).
    """
    max_body = int(config.gateway.max_body_mb * 1_000_000)
    live = Live.of(config, models.models, read_at=time.time())
    app = web.Application(
        client_max_size=max_body,
        middlewares=[edge_middleware(live)],
    )
    app[messages.COUNT_CACHE] = messages.CountCache()
    app[METRICS] = GatewayMetrics()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Pooled neuron connections idle out before a neuron's own keepalive_timeout_s (30 s by
        # default) would close them under a request.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=POOL_IDLE_S)
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        gateway = wire(live, session, PinStore(state_path))
        fleet, loader = gateway.fleet, gateway.loader
        app[GATEWAY] = gateway
        app[METRICS].attach(gateway)
        await fleet.start()
        loader.spawn(loader.reap_idle())
        loader.ensure_pinned()
        log.info(
            "gateway ready: %d neurons, %d upstreams, %d catalogue models",
            len(config.neurons),
            len(config.upstreams),
            len(gateway.catalogue.view().models),
        )
        yield
        await loader.stop()
        await fleet.stop()
        await session.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/health", health)
    app.router.add_get("/", root)  # HEAD too
    app.router.add_post("/api/event_logging/batch", drop_events)
    app.router.add_post(
        "/v1/chat/completions",
        _exchange_handler("openai", "/v1/chat/completions", chat.chat_completions),
    )
    app.router.add_post(
        "/v1/completions",
        _exchange_handler("openai", "/v1/completions", text_completions.create),
    )
    app.router.add_post(
        "/v1/embeddings", _exchange_handler("openai", "/v1/embeddings", embeddings.create)
    )
    app.router.add_post(
        "/v1/messages", _exchange_handler("anthropic", "/v1/messages", messages.create)
    )
    app.router.add_post(
        "/v1/messages/count_tokens",
        _exchange_handler("anthropic", "/v1/messages/count_tokens", messages.count_tokens),
    )
    app.router.add_post(
        "/v1/responses", _exchange_handler("responses", "/v1/responses", responses.create)
    )
    ollama.add_routes(app, _exchange_handler)
    gemini.add_routes(app, _exchange_handler)
    app.router.add_get("/v1/models", admin.list_models)
    app.router.add_get("/v1/models/{model}", admin.get_model)
    app.router.add_get("/cortex/status", admin.status)
    app.router.add_get("/ui", ui.dashboard)
    app.router.add_post("/cortex/models/{model}/{action}", admin.model_action)
    return app


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed: the gateway's per-request CPU is mostly event-loop work."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(config: cfg.CortexConfig, *, config_path: Path) -> None:
    """Run the gateway until SIGINT/SIGTERM (the CLI calls this after --check passed)."""
    models = cfg.load_models(cfg.resolve_relative(config_path, config.gateway.models))
    host, port = cfg.split_listen(config.gateway.listen)
    state = config.gateway.state_file
    app = make_app(config, models, cfg.resolve_relative(config_path, state) if state else None)
    app.cleanup_ctx.append(listener(*cfg.split_listen(config.gateway.metrics_listen)))
    app.cleanup_ctx.append(reload.on_sighup(config_path))
    edge.run_server(
        app,
        host=host,
        port=port,
        loop=_event_loop(),
        print=None,
        access_log=None,
        handler_cancellation=True,
        keepalive_timeout=config.gateway.keepalive_timeout_s,  # also bounds a trickled head
        lingering_time=edge.LINGER_S,
        shutdown_timeout=5.0,
    )
