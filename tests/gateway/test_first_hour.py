"""What a newcomer trips on first (issue 24), against a gateway in front of a mock upstream over
loopback: wrong methods, keys without their scheme, 401s in the log, a hung-up stream's token
count, the metrics port's 404, the root page, and headers that must not switch dialects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

from cortex import cli_fleet
from cortex.config import CortexConfig, GatewaySection, ModelEntry, ModelsConfig, UpstreamRef
from cortex.gateway.app import make_app
from cortex.gateway.metrics import listener
from tests.e2e.neuron_process import free_port
from tests.gateway.mock_upstream import MockState, make_mock_upstream

KEY = "sk-test-key"
CHAT = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    server = TestServer(make_mock_upstream(MockState()), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/v1"))
    await server.close()


@contextlib.asynccontextmanager
async def gateway(upstream_url: str, **options: Any) -> AsyncIterator[str]:
    config = CortexConfig(
        gateway=GatewaySection(**options),
        upstreams=(UpstreamRef(name="mock", endpoint=upstream_url),),
    )
    server = TestServer(make_app(config, ModelsConfig()), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def _call(
    method: str, url: str, body: Any = None, **headers: str
) -> tuple[int, dict[str, Any], Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=headers, allow_redirects=False) as resp,
    ):
        raw = await resp.read()
        is_json = raw and resp.content_type == "application/json"
        return resp.status, msgspec.json.decode(raw) if is_json else {}, resp.headers


async def test_get_on_a_post_route_is_405_naming_the_method(upstream_url: str) -> None:
    async with gateway(upstream_url) as base:
        status, body, headers = await _call("GET", base + "/v1/chat/completions")
    assert status == 405 and headers["allow"] == "POST"
    assert body["error"]["code"] == "method_not_allowed"
    assert "use POST" in body["error"]["message"]


async def test_a_key_without_bearer_is_told_to_add_the_scheme(upstream_url: str) -> None:
    async with gateway(upstream_url, api_keys=(KEY,)) as base:
        status, body, _ = await _call(
            "POST", base + "/v1/chat/completions", CHAT, authorization=KEY
        )
        assert status == 401
        message = body["error"]["message"]
        assert "no scheme" in message and "Bearer KEY" in message and KEY not in message
        status, body, _ = await _call(
            "POST", base + "/v1/chat/completions", CHAT, authorization=f"Basic {KEY}"
        )
        assert status == 401 and "'Basic' is not a scheme" in body["error"]["message"]


async def test_refused_keys_are_logged_without_the_key(
    upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cortex.gateway")
    async with gateway(upstream_url, api_keys=(KEY,)) as base:
        await _call("POST", base + "/v1/chat/completions", CHAT, authorization="Bearer wrong")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("401")]
    assert "POST /v1/chat/completions" in line and "Invalid API key" in line
    assert "wrong" not in line


async def test_a_hung_up_stream_is_logged_with_the_tokens_it_got(
    upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cortex.request")
    async with gateway(upstream_url) as base, aiohttp.ClientSession() as session:
        resp = await session.post(
            base + "/v1/chat/completions", json={**CHAT, "model": "mock-slow", "stream": True}
        )
        chunks = 0
        while chunks < 5:
            line = await resp.content.readline()
            chunks += b'"content":"' in line and b'"content":""' not in line
        resp.close()
        fields: dict[str, Any] = {}
        for _ in range(200):  # the handler's cancellation is logged once it has unwound
            done = [r for r in caplog.records if getattr(r, "fields", None)]
            if done:
                fields = done[0].fields  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.01)
    assert fields["status"] == 499
    assert fields["completion_tokens"] >= 5


async def test_the_metrics_port_answers_404_in_json() -> None:
    port = free_port()
    app = make_app(CortexConfig(), ModelsConfig())
    app.cleanup_ctx.append(listener("127.0.0.1", port))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        status, body, _ = await _call("GET", f"http://127.0.0.1:{port}/")
        assert status == 404 and "GET /metrics only" in body["error"]["message"]
        status, _, _ = await _call("GET", f"http://127.0.0.1:{port}/metrics")
        assert status == 200
    finally:
        await server.close()


async def test_the_root_points_to_the_dashboard(upstream_url: str) -> None:
    async with gateway(upstream_url) as base:
        status, body, _ = await _call("GET", base + "/")
        assert status == 200 and body["dashboard"] == "/ui"
        status, _, headers = await _call("GET", base + "/", accept="text/html,*/*")
        assert status == 303 and headers["location"] == "/ui"
        status, _, _ = await _call("HEAD", base + "/")  # Claude Code's probe
        assert status == 200


async def test_anthropic_version_does_not_switch_an_openai_route(upstream_url: str) -> None:
    async with gateway(upstream_url) as base:
        status, body, _ = await _call(
            "POST",
            base + "/v1/chat/completions",
            {**CHAT, "model": "nope"},
            **{"anthropic-version": "2023-06-01"},
        )
        assert status == 404 and body["error"]["code"] == "model_not_found"
        status, body, _ = await _call(  # a route both SDKs call: the header still decides
            "GET", base + "/v1/models/nope", **{"anthropic-version": "2023-06-01"}
        )
        assert status == 404 and body["type"] == "error"


async def test_the_cli_names_its_key_option_against_a_keyed_gateway(upstream_url: str) -> None:
    async with gateway(upstream_url, admin_keys=("sk-admin",)) as base:
        result = await asyncio.to_thread(
            CliRunner().invoke, cli_fleet.status, ["--gateway", base], env={}
        )
        assert result.exit_code == 1
        assert "401: Missing admin key" in result.output
        assert "--key KEY" in result.output and "CORTEX_ADMIN_KEY" in result.output
        result = await asyncio.to_thread(
            CliRunner().invoke, cli_fleet.status, ["--gateway", base, "--key", "sk-admin"]
        )
        assert result.exit_code == 0, result.output


def test_status_shows_memory_in_gb() -> None:
    status = msgspec.json.decode(
        b'{"version": "x", "models": [], "neurons": [{"name": "n", "endpoint": "e",'
        b' "state": "up", "devices": [{"id": "cpu", "kind": "cpu", "index": 0, "name": "cpu",'
        b' "total_bytes": 4000000000, "free_bytes": 3000000000, "used_bytes": 1000000000}]}]}',
        type=cli_fleet.GatewayStatus,
    )
    assert "1.0/4.0 GB" in cli_fleet.render_status(status)


async def test_a_context_overflow_names_the_window_and_a_bigger_model() -> None:
    too_long = {
        "message": "This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in 9000 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "small", "object": "model"}]})

    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"error": too_long}, status=400)

    small = web.Application()
    small.router.add_get("/v1/models", models)
    small.router.add_post("/v1/chat/completions", chat)
    upstream = TestServer(small, host="127.0.0.1")
    await upstream.start_server()
    catalogue = ModelsConfig(models=(ModelEntry(id="big", source="big", context_length=32768),))
    config = CortexConfig(
        upstreams=(UpstreamRef(name="u", endpoint=str(upstream.make_url("/v1"))),)
    )
    server = TestServer(make_app(config, catalogue), host="127.0.0.1")
    await server.start_server()
    try:
        status, body, _ = await _call(
            "POST", str(server.make_url("/v1/chat/completions")), {**CHAT, "model": "small"}
        )
    finally:
        await server.close()
        await upstream.close()
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    message = body["error"]["message"]
    assert message.startswith(too_long["message"])
    assert "'small' holds 8192 tokens" in message and "'big' (32768 tokens)" in message
