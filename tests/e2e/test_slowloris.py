"""Slow clients against a live gateway and neuron: a request head or body trickled a byte at a
time is cut within the configured timeouts (keepalive_timeout_s, body_timeout_s), and the
server keeps answering others meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from cortex.edge import LINGER_S  # after a 408 the rest of the body is read and dropped
from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess
from tests.e2e.raw_http import address, request, send

pytestmark = pytest.mark.slow

TIMEOUT_S = 1.0  # keepalive_timeout_s and body_timeout_s of both roles
SLACK_S = 1.5  # scheduling on a loaded 2-core machine
CONNECTIONS = 30
TOKEN = "slow-token"


@pytest.fixture(scope="module")
def urls(
    start_neuron: Callable[..., NeuronProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    neuron = start_neuron(  # no harness: the edge is all this tests, and it starts in ~1 s
        token=TOKEN,
        model_roots=[tmp_path_factory.mktemp("empty")],
        harnesses=["no-such-harness"],
        keepalive_timeout_s=TIMEOUT_S,
        body_timeout_s=TIMEOUT_S,
    )
    gateway = GatewayProcess.start(
        tmp_path_factory.mktemp("gw"),
        neurons={},
        models=[],
        keepalive_timeout_s=TIMEOUT_S,
        body_timeout_s=TIMEOUT_S,
    )
    yield {"gateway": gateway.url, "neuron": neuron.url}
    gateway.stop()


async def _trickle(url: str, head: bytes, drip: bytes) -> tuple[float, bytes]:
    """Send ``head``, then ``drip`` one byte every 0.1 s until the server answers or closes;
    returns (seconds until closed, what the server sent)."""
    reader, writer = await asyncio.open_connection(*address(url))
    started = time.monotonic()
    writer.write(head)
    received = b""

    async def drip_bytes() -> None:
        for i in range(len(drip)):
            await asyncio.sleep(0.1)
            writer.write(drip[i : i + 1])
            await writer.drain()

    dripping = asyncio.create_task(drip_bytes())
    try:
        while chunk := await reader.read(65536):
            received += chunk
    except ConnectionError:
        pass
    finally:
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        writer.close()
    return time.monotonic() - started, received


async def _many(url: str, head: bytes, drip: bytes) -> list[tuple[float, bytes]]:
    return await asyncio.gather(*(_trickle(url, head, drip) for _ in range(CONNECTIONS)))


@pytest.mark.parametrize("role", ["gateway", "neuron"])
def test_a_trickled_head_is_closed_within_keepalive_timeout(
    urls: dict[str, str], role: str
) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    results = asyncio.run(_many(urls[role], head, b"X-Slow: " + b"a" * 200))
    assert all(seconds < TIMEOUT_S + SLACK_S for seconds, _ in results), results
    assert all(received == b"" for _, received in results)  # cut, not answered
    assert send(urls[role], request("GET", "/health"))[0] == 200


@pytest.mark.parametrize("role", ["gateway", "neuron"])
def test_a_trickled_body_gets_408_within_body_timeout(urls: dict[str, str], role: str) -> None:
    body = b'{"model": "x", "messages": []}' + b" " * 200
    head = request(
        "POST",
        "/v1/chat/completions",
        body,
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )[: -len(body)]
    results = asyncio.run(_many(urls[role], head, body))
    for seconds, received in results:
        assert seconds < TIMEOUT_S + LINGER_S + SLACK_S
        assert received.startswith(b"HTTP/1.1 408"), received[:200]
        assert b'"code":"request_timeout"' in received
    assert send(urls[role], request("GET", "/health"))[0] == 200
