"""The neuron's aiohttp application: factory, middlewares, start-up/teardown, and ``serve``.

``make_app`` builds the app without touching devices or the network, so tests can run it in
process; ``serve`` adds the socket and the process-level checks. Start-up opens the devices
(NVML), creates the ModelManager and starts ``preload`` loads in the background (/health answers
meanwhile); teardown cancels those, unloads every model and closes NVML.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from cortex import edge
from cortex.config import (
    GB,
    ModelsConfig,
    NeuronConfig,
    load_models,
    resolve_relative,
    split_listen,
)
from cortex.edge import LINGER_S, read_body
from cortex.errors import (
    CortexError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    openai_body,
)
from cortex.neuron.gpus import Devices
from cortex.neuron.harness import Harness
from cortex.neuron.lifecycle import ModelManager
from cortex.neuron.metrics import METRICS, NeuronMetrics
from cortex.neuron.node import NODE, Node
from cortex.neuron.registry import discover
from cortex.neuron.reload import on_sighup
from cortex.neuron.routes import add_routes

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024
"""Request body limit (a long chat with tool schemas is well under this)."""

_PUBLIC = frozenset({"/health"})


def make_app(
    config: NeuronConfig, models_config: ModelsConfig, harnesses: Mapping[str, Harness]
) -> web.Application:
    section = config.neuron
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[_errors, _auth(section.token), _body(section.body_timeout_s)],
    )
    add_routes(app)
    app[METRICS] = NeuronMetrics()
    app.cleanup_ctx.append(_lifespan(config, models_config, harnesses))
    return app


def serve(config: NeuronConfig, config_path: Path) -> None:
    """Run a neuron until SIGINT/SIGTERM. Exits with one line when it would listen on a
    non-loopback address without a token."""
    host, port = split_listen(config.neuron.listen)
    if not config.neuron.token and not _is_loopback(host):
        # Exit 2 like any config error: systemd's RestartPreventExitStatus=2 stops a restart loop.
        print(
            f"{config_path.name}: refusing to listen on {host}:{port} without neuron.token "
            "(set a token, or listen on 127.0.0.1)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    # Libraries draw tqdm bars while loading (transformers' weights, a GGUF's conversion, hub
    # downloads): animations for a terminal, noise in a server log. tqdm reads TQDM_* when it
    # is first imported, which is after this (harness discovery below imports the libraries).
    os.environ.setdefault("TQDM_DISABLE", "1")
    models = (
        load_models(resolve_relative(config_path, config.neuron.models))
        if config.neuron.models
        else ModelsConfig()
    )
    app = make_app(config, models, discover(config.neuron.harnesses))
    app.cleanup_ctx.append(on_sighup(config_path))
    log.info("neuron %s listening on %s:%d", config.neuron.name, host, port)
    # handler_cancellation: a client hang-up cancels its handler, hence its sequence. On SIGTERM
    # requests in flight get unload_drain_s to finish, as an unload would give them.
    edge.run_server(
        app,
        host=host,
        port=port,
        handler_cancellation=True,
        shutdown_timeout=config.neuron.unload_drain_s,
        keepalive_timeout=config.neuron.keepalive_timeout_s,  # also bounds a trickled head
        lingering_time=LINGER_S,
        access_log=None,
        print=None,
    )


def _lifespan(
    config: NeuronConfig, models_config: ModelsConfig, harnesses: Mapping[str, Harness]
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        devices = Devices(int(config.neuron.cpu_memory_budget_gb * GB))
        node = Node(
            config, models_config, harnesses, ModelManager(config.neuron, harnesses, devices)
        )
        app[NODE] = node
        app[METRICS].attach(node.manager)
        node.start_preloads(config.preload)
        try:
            yield
        finally:
            await node.stop_preloads()
            await node.manager.shutdown()
            devices.close()

    return lifespan


def _error_response(request: web.Request, err: CortexError) -> web.Response:
    return edge.error_response(err, openai_body(err), err.status)


def _from_http(request: web.Request, exc: web.HTTPException) -> CortexError:
    if exc.status == 413:
        return PayloadTooLarge(f"Request body exceeds {MAX_BODY_BYTES} bytes.")
    if exc.status == 404:
        return NotFound(f"No route {request.method} {request.path}.")
    if exc.status == 405:
        return edge.not_allowed(request, exc)
    return InvalidRequest(exc.reason)


# Always an OpenAI envelope: only the gateway (and operators' curl) talk to a neuron.
_errors = edge.errors_middleware(
    _error_response, _from_http, log, "Internal error; see the neuron's log."
)


def _auth(token: str) -> Middleware:
    expected = (f"Bearer {token}",)

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        if token and request.path not in _PUBLIC and not edge.key_matches(given, expected):
            log.warning("401 %s %s from %s", request.method, request.path, request.remote)
            raise Unauthorized("Missing or incorrect bearer token.")
        return await handler(request)

    return auth


def _body(timeout_s: float) -> Middleware:
    @web.middleware
    async def body(request: web.Request, handler: Handler) -> web.StreamResponse:
        await read_body(request, timeout_s)
        return await handler(request)

    return body


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
