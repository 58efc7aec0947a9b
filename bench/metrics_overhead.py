"""What the gateway's per-request metrics cost, against what a request costs the gateway.

    python bench/metrics_overhead.py [--calls 200000] [--requests 3000] [--concurrency 8]
        [--rounds 3] [--stream]

1. ``RequestMetrics.finished`` on a realistic streamed Exchange, timed in a loop (µs per call).
2. The gateway's own CPU per request: a gateway in a child process in front of a trivial
   upstream (in this process), driven by a local client with ``--concurrency`` requests open.
   The child's user+system CPU (from /proc, so Linux only) is divided by the request count,
   with the request observer attached and with it removed, alternating for ``--rounds``; the
   best round of each is reported (CPU noise from neighbours only ever adds).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import time
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from cortex.config import CortexConfig, GatewaySection, ModelsConfig, UpstreamRef
from cortex.gateway.app import make_app
from cortex.gateway.core import GATEWAY
from cortex.gateway.exchange import Exchange
from cortex.gateway.metrics import GatewayMetrics

ROUTE = "/v1/chat/completions"
USAGE = {"prompt_tokens": 812, "completion_tokens": 230, "total_tokens": 1042}
COMPLETION = msgspec.json.encode(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok " * 50},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
)


def _event(choices: list[Any], usage: Any) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "bench"}
    return b"data: " + msgspec.json.encode({**chunk, "choices": choices, "usage": usage}) + b"\n\n"


_TOKEN = [{"index": 0, "delta": {"content": "ok "}, "finish_reason": None}]
STREAM = _event(_TOKEN, None) * 20 + _event([], USAGE) + b"data: [DONE]\n\n"
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "hello " * 100}]}


def observer_us(calls: int) -> float:
    """µs per ``finished`` call on a streamed exchange with a warm label cache."""
    metrics = GatewayMetrics()
    ex = Exchange("openai", ROUTE, model="qwen2.5-7b", node="gpu-a", stream=True)
    ex.started, ex.upstream_sent, ex.first_token = 10.0, 10.0003, 10.2
    ex.upstream_done, ex.finished = 14.8, 14.8002
    ex.prompt_tokens, ex.completion_tokens = 812, 230
    finished = metrics.requests.finished
    finished(ex)
    start = time.perf_counter()
    for _ in range(calls):
        finished(ex)
    return (time.perf_counter() - start) / calls * 1e6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _gateway(port: int, upstream: str, with_metrics: bool) -> None:
    """Child process: one gateway, observers removed when ``with_metrics`` is false."""
    config = CortexConfig(
        gateway=GatewaySection(), upstreams=(UpstreamRef(name="up", endpoint=upstream),)
    )
    app = make_app(config, ModelsConfig())

    async def strip(app: web.Application) -> None:  # runs after cleanup_ctx built the gateway
        if not with_metrics:
            app[GATEWAY].observers.clear()

    app.on_startup.append(strip)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _upstream() -> web.Application:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "bench", "object": "model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if b'"stream":true' not in body:
            return web.Response(body=COMPLETION, content_type="application/json")
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(STREAM)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _drive(url: str, requests: int, concurrency: int, body: dict[str, Any]) -> None:
    remaining = requests

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            async with session.post(url, json=body) as resp:
                await resp.read()
                assert resp.status == 200, resp.status

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


async def gateway_cpu_us(
    with_metrics: bool, requests: int, concurrency: int, stream: bool
) -> float:
    """The gateway child's CPU µs per request."""
    runner = web.AppRunner(_upstream())
    await runner.setup()
    up_port, gw_port = _free_port(), _free_port()
    await web.TCPSite(runner, "127.0.0.1", up_port).start()
    child = multiprocessing.get_context("spawn").Process(
        target=_gateway, args=(gw_port, f"http://127.0.0.1:{up_port}/v1", with_metrics)
    )
    child.start()
    assert child.pid is not None
    url = f"http://127.0.0.1:{gw_port}{ROUTE}"
    body = {**CHAT, "stream": True} if stream else CHAT
    try:
        for _ in range(200):  # until the gateway has seen the upstream's model list
            try:
                await _drive(url, 1, 1, body)
                break
            except (aiohttp.ClientError, AssertionError):
                await asyncio.sleep(0.1)
        await _drive(url, 200, concurrency, body)  # warm-up
        before = _cpu_s(child.pid)
        await _drive(url, requests, concurrency, body)
        return (_cpu_s(child.pid) - before) / requests * 1e6
    finally:
        child.terminate()
        child.join()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    per_call = observer_us(args.calls)
    print(f"observer finished(): {per_call:.2f} µs per call ({args.calls} calls)")
    with_m: list[float] = []
    without: list[float] = []
    for _ in range(args.rounds):
        for flag, out in ((True, with_m), (False, without)):
            out.append(
                asyncio.run(gateway_cpu_us(flag, args.requests, args.concurrency, args.stream))
            )
    kind = "streamed" if args.stream else "non-stream"
    print(f"gateway CPU per {kind} request, with metrics:    {min(with_m):.0f} µs  {with_m}")
    print(f"gateway CPU per {kind} request, without metrics: {min(without):.0f} µs  {without}")
    base = min(without)
    print(f"observer / request CPU: {per_call / base:.2%}")
    print(f"with / without - 1:     {min(with_m) / base - 1:+.2%} (noise: compare the rounds)")


if __name__ == "__main__":
    main()
