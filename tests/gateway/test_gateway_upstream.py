"""The gateway in front of a plain OpenAI upstream (a named test double), over real loopback HTTP.

Covers the relay (byte-identical bodies, streamed chunks, forced usage), both dialects' errors,
auth, a dying upstream mid-stream and a client hang-up reaching the upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import aiohttp
import anthropic
import msgspec
import openai
import pytest
from aiohttp.test_utils import TestServer

from cortex.config import CortexConfig, GatewaySection, ModelsConfig, UpstreamRef
from cortex.gateway.app import make_app
from tests.gateway.mock_upstream import (
    COMPLETION_BYTES,
    MODELS,
    WORDS,
    MockState,
    make_mock_upstream,
)

KEY = "sk-test-key"


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[TestServer, MockState]]:
    state = MockState()
    server = TestServer(make_mock_upstream(state), host="127.0.0.1")
    await server.start_server()
    yield server, state
    await server.close()


SDKClient = TypeVar("SDKClient", openai.AsyncOpenAI, anthropic.AsyncAnthropic)
Closing = Callable[[SDKClient], SDKClient]


@pytest.fixture
async def closing() -> AsyncIterator[Closing[Any]]:
    """Closes each SDK client before the test's loop ends: one dropped open is closed at garbage
    collection, on a dead loop, and logs an error into whichever test runs then."""
    opened: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic] = []

    def keep(client: SDKClient) -> SDKClient:
        opened.append(client)
        return client

    yield keep
    for client in opened:
        await client.close()


GatewayFactory = Callable[..., Any]


@pytest.fixture
async def gateway(
    upstream: tuple[TestServer, MockState],
) -> AsyncIterator[GatewayFactory]:
    servers: list[TestServer] = []

    async def start(**gateway_options: Any) -> str:
        server, _ = upstream
        config = CortexConfig(
            gateway=GatewaySection(**gateway_options),
            upstreams=(UpstreamRef(name="mock", endpoint=str(server.make_url("/v1"))),),
        )
        gw = TestServer(
            make_app(config, ModelsConfig()), host="127.0.0.1", handler_cancellation=True
        )
        await gw.start_server()
        servers.append(gw)
        return str(gw.make_url("/"))

    yield start
    for server in servers:
        await server.close()


async def _post(
    base: str, path: str, body: dict[str, Any], **headers: str
) -> tuple[int, bytes, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + path, json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.read(), resp.headers


CHAT = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}


async def test_models_lists_upstream_models_as_resident(
    closing: Closing[Any], gateway: GatewayFactory
) -> None:
    base = await gateway()
    client = closing(openai.AsyncOpenAI(base_url=base + "v1", api_key="unused"))
    models = await client.models.list()
    cards = {m.id: m for m in models.data}
    assert set(cards) == set(MODELS)
    assert cards["mock-gpt"].model_extra["cortex"]["state"] == "resident"  # type: ignore[index]


async def test_models_retrieve_one_card_or_404(
    closing: Closing[Any], gateway: GatewayFactory
) -> None:
    base = await gateway()
    client = closing(openai.AsyncOpenAI(base_url=base + "v1", api_key="unused", max_retries=0))
    card = await client.models.retrieve("mock-gpt")
    assert card.id == "mock-gpt" and card.owned_by == "mock"
    with pytest.raises(openai.NotFoundError) as err:
        await client.models.retrieve("nope")
    assert err.value.code == "model_not_found"


async def test_anthropic_sdk_lists_and_retrieves_models_in_its_shape(
    closing: Closing[Any],
    gateway: GatewayFactory,
) -> None:
    base = await gateway()
    client = closing(
        anthropic.AsyncAnthropic(base_url=base.rstrip("/"), api_key="unused", max_retries=0)
    )
    page = await client.models.list()
    assert [m.id for m in page.data] == MODELS
    assert page.data[0].type == "model" and page.data[0].display_name == "mock-gpt"
    assert (await client.models.retrieve("mock-gpt")).id == "mock-gpt"
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("nope")


async def test_non_stream_body_is_relayed_byte_for_byte(gateway: GatewayFactory) -> None:
    base = await gateway()
    status, body, headers = await _post(base, "v1/chat/completions", CHAT)
    assert status == 200
    assert body == COMPLETION_BYTES
    assert headers["request-id"].startswith("req_")


async def test_stream_forces_usage_upstream_and_hides_it_from_client(
    closing: Closing[Any], gateway: GatewayFactory, upstream: tuple[TestServer, MockState]
) -> None:
    base = await gateway()
    client = closing(openai.AsyncOpenAI(base_url=base + "v1", api_key="unused"))
    stream = await client.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(WORDS)
    assert all(c.usage is None for c in chunks), "client did not ask for usage"
    assert upstream[1].requests[-1]["stream_options"] == {"include_usage": True}


async def test_finished_streams_reuse_the_upstream_connection(
    closing: Closing[Any], gateway: GatewayFactory, upstream: tuple[TestServer, MockState]
) -> None:
    base = await gateway()
    client = closing(openai.AsyncOpenAI(base_url=base + "v1", api_key="unused"))
    for _ in range(3):
        stream = await client.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert len([c async for c in stream]) > 1
    assert len(upstream[1].peers) == 1, "keep-alive: one connection for three streams"


async def test_stream_keeps_usage_when_client_asks(
    closing: Closing[Any], gateway: GatewayFactory
) -> None:
    base = await gateway()
    client = closing(openai.AsyncOpenAI(base_url=base + "v1", api_key="unused"))
    stream = await client.chat.completions.create(
        model="mock-gpt",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(WORDS)


async def test_anthropic_sdk_create_and_stream_through_gateway(
    closing: Closing[Any], gateway: GatewayFactory
) -> None:
    base = await gateway()
    client = closing(anthropic.AsyncAnthropic(base_url=base.rstrip("/"), api_key="unused"))
    message = await client.messages.create(
        model="mock-gpt", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text" and message.content[0].text == "".join(WORDS)
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, len(WORDS))
    async with client.messages.stream(
        model="mock-gpt", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "".join(WORDS)
    assert final.usage.output_tokens == len(WORDS)


async def test_max_tokens_is_a_ceiling_on_an_upstream_that_counts_it_against_the_context(
    gateway: GatewayFactory, upstream: tuple[TestServer, MockState]
) -> None:
    """vLLM refuses prompt + max_tokens over its context; Claude Code's 32000 is then asked
    again for the 100 tokens left, unseen by the client."""
    base = await gateway()
    body = {**CHAT, "model": "mock-ctx", "max_tokens": 32000}
    status, raw, _ = await _post(base, "v1/messages", body)
    assert status == 200, raw
    assert msgspec.json.decode(raw)["stop_reason"] == "end_turn"
    _, state = upstream
    assert [r["max_tokens"] for r in state.requests] == [32000, 100]


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("v1/chat/completions", {**CHAT, "temperature": 9}, 400, "'temperature'"),
        ("v1/chat/completions", {**CHAT, "model": "nope"}, 404, "'nope' does not exist"),
        ("v1/chat/completions", {"model": "mock-gpt"}, 400, "'messages'"),
        ("v1/messages", {**CHAT, "model": "nope", "max_tokens": 5}, 404, "does not exist"),
        ("v1/messages", CHAT, 400, "'max_tokens'"),
        ("v1/nothing", CHAT, 404, "No route"),
        ("chat/completions", CHAT, 404, "did you mean /v1/chat/completions?"),
        ("v1/v1/messages", CHAT, 404, "ends in /v1 twice"),
    ],
)
async def test_bad_requests_get_errors_in_their_dialect(
    gateway: GatewayFactory, path: str, body: dict[str, Any], status: int, fragment: str
) -> None:
    base = await gateway()
    got, raw, _ = await _post(base, path, body)
    assert got == status
    parsed = msgspec.json.decode(raw)
    if path.startswith("v1/messages"):
        assert parsed["type"] == "error" and fragment in parsed["error"]["message"]
    else:
        assert set(parsed["error"]) == {"message", "type", "param", "code"}
        assert fragment in parsed["error"]["message"]


async def test_api_keys_are_required_in_both_dialects(gateway: GatewayFactory) -> None:
    base = await gateway(api_keys=(KEY,))
    status, raw, _ = await _post(base, "v1/chat/completions", CHAT)
    assert status == 401 and msgspec.json.decode(raw)["error"]["code"] == "invalid_api_key"
    status, raw, _ = await _post(
        base, "v1/messages", {**CHAT, "max_tokens": 5}, **{"x-api-key": "wrong"}
    )
    assert status == 401 and msgspec.json.decode(raw)["error"]["type"] == "authentication_error"
    status, _, _ = await _post(base, "v1/chat/completions", CHAT, authorization=f"Bearer {KEY}")
    assert status == 200
    status, _, _ = await _post(base, "v1/messages", {**CHAT, "max_tokens": 5}, **{"x-api-key": KEY})
    assert status == 200


async def test_missing_and_wrong_keys_are_told_apart_and_admin_keys_open_client_routes(
    gateway: GatewayFactory,
) -> None:
    base = await gateway(api_keys=(KEY,), admin_keys=("sk-admin",))
    status, raw, _ = await _post(base, "v1/chat/completions", CHAT)
    assert status == 401
    assert msgspec.json.decode(raw)["error"]["message"].startswith("Missing API key")
    status, raw, _ = await _post(base, "v1/chat/completions", CHAT, authorization="Bearer nope")
    assert status == 401 and msgspec.json.decode(raw)["error"]["message"] == "Invalid API key."
    status, _, _ = await _post(base, "v1/chat/completions", CHAT, authorization="Bearer sk-admin")
    assert status == 200  # `cortex models` with the admin key works
    status, raw, _ = await _post(
        base, "cortex/models/mock-gpt/pin", {}, authorization=f"Bearer {KEY}"
    )
    assert status == 401, "a client key must not open the admin API"
    assert msgspec.json.decode(raw)["error"]["message"] == "Invalid admin key."


async def test_upstream_dying_mid_stream_gives_error_event_then_done(
    gateway: GatewayFactory,
) -> None:
    base = await gateway()
    status, raw, _ = await _post(
        base, "v1/chat/completions", {**CHAT, "model": "mock-die", "stream": True}
    )
    assert status == 200
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    error = msgspec.json.decode(events[-2][len(b"data: ") :])
    assert error["error"]["type"] == "server_error"
    assert b'"content":"Hello"' in raw, "chunks before the failure were relayed"


async def test_anthropic_stream_failure_is_an_error_event(gateway: GatewayFactory) -> None:
    base = await gateway()
    body = {**CHAT, "model": "mock-die", "stream": True, "max_tokens": 9}
    status, raw, _ = await _post(base, "v1/messages", body)
    assert status == 200
    assert raw.rstrip().split(b"\n\n")[-1].startswith(b"event: error\ndata: ")
    assert b"message_stop" not in raw


async def test_client_hang_up_closes_the_upstream_request(
    gateway: GatewayFactory, upstream: tuple[TestServer, MockState]
) -> None:
    base = await gateway()
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            base + "v1/chat/completions", json={**CHAT, "model": "mock-slow", "stream": True}
        )
        for _ in range(3):
            await resp.content.readline()
        resp.close()
    for _ in range(100):
        if upstream[1].disconnects:
            break
        await asyncio.sleep(0.05)
    assert upstream[1].disconnects == 1
    assert upstream[1].completed_streams == 0


async def test_admin_status_shows_upstream(gateway: GatewayFactory) -> None:
    base = await gateway()
    async with aiohttp.ClientSession() as session, session.get(base + "cortex/status") as resp:
        status = await resp.json()
    assert status["upstreams"][0]["models"] == MODELS
