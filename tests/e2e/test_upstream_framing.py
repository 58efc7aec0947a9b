"""An [[upstreams]] server whose SSE framing is unusual but valid streams through the gateway.

The upstream is a test double written here: CRLF line ends, ``data:`` without a space, comment
keep-alives, one chunk's JSON split over two ``data:`` lines, and ``data:[DONE]``. The gateway is
a real process; both the OpenAI relay and the Anthropic translation must read it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.threaded_server import ThreadedServer

pytestmark = pytest.mark.slow

WORDS = ["Framing", " is", " fine", "."]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-odd",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "odd-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _odd_stream() -> bytes:
    out = [b": hello from an odd server\r\n\r\n"]
    out.append(b"data:" + json.dumps(_chunk({"role": "assistant", "content": ""})).encode())
    out.append(b"\r\n\r\n")
    for i, word in enumerate(WORDS):
        text = json.dumps(_chunk({"content": word}), indent=1).encode()
        if i == 1:  # one event's JSON over two data: lines (joined with LF: JSON whitespace)
            head, tail = text.split(b"\n", 1)
            out.append(b"data: " + head + b"\r\ndata: " + tail.replace(b"\n", b" ") + b"\r\n\r\n")
        else:
            out.append(b"data:" + text.replace(b"\n", b" ") + b"\r\n\r\n")
        out.append(b":keep-alive\r\n\r\n")
    out.append(b"data:" + json.dumps(_chunk({}, "stop")).encode() + b"\r\n\r\n")
    out.append(b"data:[DONE]\r\n\r\n")
    return b"".join(out)


def _odd_upstream() -> web.Application:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "odd-model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        stream = _odd_stream()
        for i in range(0, len(stream), 7):  # small writes: events split across reads
            await resp.write(stream[i : i + 7])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    server = ThreadedServer(_odd_upstream())
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw"),
        neurons={},
        models=[],
        upstreams=[{"name": "odd", "endpoint": server.url}],
    )
    yield gw
    gw.stop()
    server.stop()


def test_openai_stream_from_an_oddly_framed_upstream(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="odd-model", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(WORDS)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_anthropic_stream_from_an_oddly_framed_upstream(gateway: GatewayProcess) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    with client.messages.stream(
        model="odd-model", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(WORDS)
    assert final.stop_reason == "end_turn"
