"""A saturated neuron behind a live gateway (tiny demo model, one decode place, two queue places).

Past the neuron's queue bound a request gets 429 with Retry-After at once; queued streams wait
longer than the gateway's idle_timeout_s, yet finish normally (the neuron sends their headers
and SSE heartbeats before admission) and the healthy node is never marked suspect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess

pytestmark = pytest.mark.slow

IDLE_S = 1.0  # the gateway's idle_timeout_s: longest silence it allows in a stream
STREAMS = 8
MODEL = {"id": "tiny", "source": "tiny", "context_length": 2048, "vram_gb": 0.1}


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Callable[..., NeuronProcess],
    model_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    neuron = start_neuron(
        name="n1",
        model_roots=[model_root],
        models=[MODEL],
        preload=["tiny"],
        cpu_memory_budget_gb=2.0,
        max_concurrency=1,
        queue_depth=2,
        heartbeat_s=0.2,
    )
    neuron.wait_for(lambda s: [m["state"] for m in s["models"]] == ["loaded"], timeout=60)
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw"), neurons={"n1": neuron}, models=[MODEL], idle_timeout_s=IDLE_S
    )
    yield gw
    gw.stop()


async def _stream(session: aiohttp.ClientSession, url: str, seed: int) -> dict[str, Any]:
    """One sampled stream of up to 400 tokens (random weights rarely pick EOS when sampling)."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Tell me about the weather"}],
        "max_tokens": 400,
        "seed": seed,
        "stream": True,
    }
    started = time.monotonic()
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            return {"status": resp.status, "headers": resp.headers, "body": await resp.json()}
        first_content, raw = None, b""
        async for chunk in resp.content.iter_any():
            if first_content is None and b'"content":"' in chunk and b'"content":""' not in chunk:
                first_content = time.monotonic() - started
            raw += chunk
        return {"status": 200, "first_content_s": first_content, "raw": raw}


async def _saturate(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        return await asyncio.gather(*(_stream(session, url, seed) for seed in range(STREAMS)))


def test_past_the_queue_bound_429_and_queued_streams_do_not_make_the_node_suspect(
    gateway: GatewayProcess,
) -> None:
    results = asyncio.run(_saturate(gateway.url))
    refused = [r for r in results if r["status"] == 429]
    served = [r for r in results if r["status"] == 200]
    assert len(refused) + len(served) == STREAMS
    assert len(refused) >= STREAMS - 3  # one running, two queued; the rest refused at once
    for r in refused:
        assert r["headers"]["Retry-After"] == "1"
        assert r["body"]["error"]["type"] == "rate_limit_error"
    for r in served:
        assert r["raw"].endswith(b"data: [DONE]\n\n") and b'"error"' not in r["raw"]
    # The last admitted stream waited longer than the gateway tolerates silence.
    waits = [r["first_content_s"] for r in served]
    assert max(waits) > IDLE_S, waits
    _, status = gateway.call("GET", "/cortex/status")
    assert [n["state"] for n in status["neurons"]] == ["up"]
    assert "suspect" not in gateway.log_text()
