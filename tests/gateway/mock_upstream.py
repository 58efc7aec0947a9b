"""A test double for a plain OpenAI-compatible upstream (what a vLLM or llama.cpp server speaks).

Model names pick the behaviour: ``mock-gpt`` answers normally; ``mock-die`` streams two chunks
and then drops the connection; ``mock-slow`` streams one chunk every 50 ms for 10 s, so a test
can hang up mid-stream and watch the upstream see it; ``mock-ctx`` has vLLM's context rule
(a 128-token context, every prompt 28 tokens: ``max_tokens`` over 100 is a 400 in vLLM's words).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

WORDS = ["Hello", " from", " the", " mock", "."]
MODELS = ["mock-gpt", "mock-die", "mock-slow", "mock-ctx"]  # as GET /v1/models lists them


@dataclass
class MockState:
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnects: int = 0
    completed_streams: int = 0
    peers: set[tuple[str, int]] = field(default_factory=set)  # client (host, port) per request


def _chunk(content: str | None, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    body = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "mock-gpt",
        "usage": None,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


def _usage_chunk() -> bytes:
    body = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "mock-gpt",
        "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": len(WORDS), "total_tokens": 12},
    }
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


COMPLETION = {
    "id": "chatcmpl-mock",
    "object": "chat.completion",
    "created": 1,
    "model": "mock-gpt",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(WORDS)},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 7, "completion_tokens": len(WORDS), "total_tokens": 12},
}
COMPLETION_BYTES = msgspec.json.encode(COMPLETION)
VLLM_TOO_LARGE = {  # vLLM 0.11's answer to prompt + max_tokens over the context
    "message": "'max_tokens' or 'max_completion_tokens' is too large: 32000. This model's "
    "maximum context length is 128 tokens and your request has 28 input tokens "
    "(32000 > 128 - 28).",
    "type": "BadRequestError",
    "param": None,
    "code": 400,
}


def make_mock_upstream(state: MockState) -> web.Application:
    async def models(request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": i, "object": "model"} for i in MODELS]}
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.requests.append(body)
        assert request.transport is not None
        state.peers.add(request.transport.get_extra_info("peername"))
        if body["model"] == "mock-ctx" and (body.get("max_tokens") or 0) > 100:
            return web.json_response({"error": VLLM_TOO_LARGE}, status=400)
        if not body.get("stream"):
            return web.Response(body=COMPLETION_BYTES, content_type="application/json")
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        model = body["model"]
        try:
            await resp.write(_chunk("", role=True))
            if model == "mock-die":
                await resp.write(_chunk(WORDS[0]) + _chunk(WORDS[1]))
                await asyncio.sleep(0.05)
                assert request.transport is not None
                request.transport.close()
                return resp
            if model == "mock-slow":
                for i in range(200):
                    await resp.write(_chunk(f" {i}"))
                    await asyncio.sleep(0.05)
            for word in WORDS:
                await resp.write(_chunk(word))
            await resp.write(_chunk(None, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(_usage_chunk())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            state.completed_streams += 1
        except (ConnectionResetError, asyncio.CancelledError):
            state.disconnects += 1
            raise
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app
