"""A real gateway in front of two real neurons running the tiny demo model.

Node memory is made scarce on purpose (cpu_memory_budget_gb with declared vram_gb), so the tiny
model behaves like a big one: n1 has room for one model (the pinned one), n2 for two.
Each test sets up the residency it needs (``_cold``) and none stops the shared processes, so
the tests pass in any order; the one that kills a neuron starts its own pair.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess
from tests.prometheus_samples import samples, total

pytestmark = pytest.mark.slow


def _model(model_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "source": "tiny", "vram_gb": 0.6, "context_length": 2048, **extra}


MODELS = [
    _model("pin", pinned=True, nodes=["n1"]),
    _model("a", priority=1),
    _model("b", priority=3),
    _model("c", priority=5),
]


@pytest.fixture(scope="module")
def neurons(
    start_neuron: Callable[..., NeuronProcess], model_root: Path
) -> dict[str, NeuronProcess]:
    return {
        "n1": start_neuron(name="n1", model_roots=[model_root], cpu_memory_budget_gb=1.0),
        "n2": start_neuron(name="n2", model_roots=[model_root], cpu_memory_budget_gb=1.3),
    }


@pytest.fixture(scope="module")
def gateway(
    neurons: dict[str, NeuronProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    gw = GatewayProcess.start(tmp_path_factory.mktemp("gw"), neurons=neurons, models=MODELS)
    yield gw
    gw.stop()


def _cold(gw: GatewayProcess, *models: str) -> None:
    """Unload ``models`` wherever they are resident, so a test starts from a known fleet."""
    for model in models:
        status, body = gw.call("POST", f"/cortex/models/{model}/unload")
        assert status in (200, 404), body
    gw.wait_for(lambda p: all(not p[m] for m in models))


def _idle(gw: GatewayProcess, *models: str, timeout: float = 10.0) -> None:
    """Wait until the gateway sees nothing in flight or queued for ``models``."""
    deadline = time.monotonic() + timeout
    while True:
        _, status = gw.call("GET", "/cortex/status")
        busy = [
            m["id"]
            for m in status["models"]
            if m["id"] in models and any(p["in_flight"] or p["queued"] for p in m["placements"])
        ]
        if not busy:
            return
        assert time.monotonic() < deadline, f"still busy: {busy}"
        time.sleep(0.05)


def _chat(gw: GatewayProcess, model: str, **extra: Any) -> dict[str, Any]:
    status, body = gw.call(
        "POST",
        "/v1/chat/completions",
        {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], **extra},
    )
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def test_pinned_model_loads_at_start_and_catalogue_merges(gateway: GatewayProcess) -> None:
    placements = gateway.wait_for(lambda p: p.get("pin") == ["n1"])
    assert set(placements) == {"pin", "a", "b", "c"}
    _cold(gateway, "a", "b", "c")
    _, listing = gateway.call("GET", "/v1/models")
    states = {m["id"]: m["cortex"]["state"] for m in listing["data"]}
    assert states == {"pin": "resident", "a": "available", "b": "available", "c": "available"}


def test_cold_model_loads_on_first_request_and_lru_evicts(gateway: GatewayProcess) -> None:
    _cold(gateway, "a", "b", "c")
    assert _chat(gateway, "a")["usage"]["completion_tokens"] >= 1
    _chat(gateway, "b")
    assert gateway.wait_for(lambda p: p["a"] == ["n2"] and p["b"] == ["n2"])
    _chat(gateway, "a")  # b is now the least recently used
    _idle(gateway, "a", "b")  # a stale poll would still count one of them busy
    _chat(gateway, "c")
    placements = gateway.wait_for(lambda p: p["c"] == ["n2"])
    assert placements["b"] == [], "lru evicts the least recently used"
    assert placements["a"] == ["n2"]
    assert placements["pin"] == ["n1"], "a pinned model is never evicted"


def test_twenty_concurrent_requests_for_a_cold_model_load_it_once(
    gateway: GatewayProcess, neurons: dict[str, NeuronProcess]
) -> None:
    _cold(gateway, "b")

    def loads_of_b() -> int:
        logs = neurons["n1"].log_text() + neurons["n2"].log_text()
        return len(re.findall(r"loading b from", logs))

    before = loads_of_b()

    async def burst() -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one() -> int:
                body = {
                    "model": "b",
                    "max_tokens": 2,
                    "messages": [{"role": "user", "content": "x"}],
                }
                async with session.post(gateway.url + "/v1/chat/completions", json=body) as resp:
                    await resp.read()
                    return resp.status

            return await asyncio.gather(*(one() for _ in range(20)))

    assert asyncio.run(burst()) == [200] * 20
    assert loads_of_b() == before + 1, "twenty requests, one load"


def test_openai_sdk_streams_through_the_gateway(gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="pin",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def _hung_up(neuron: NeuronProcess) -> float:
    request = urllib.request.Request(neuron.url + "/metrics")
    request.add_header("Authorization", f"Bearer {neuron.token}")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return total(samples(resp.read()), "cortex_requests_total", status="499")


def test_client_hang_up_through_the_gateway_cancels_generation_on_the_neuron(
    gateway: GatewayProcess, neurons: dict[str, NeuronProcess]
) -> None:
    n1 = neurons["n1"]
    before = _hung_up(n1)
    body = {
        "model": "pin",
        "stream": True,
        "max_tokens": 1500,
        "temperature": 0,
        "messages": [{"role": "user", "content": "hi"}],
    }

    async def hang_up() -> int:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(gateway.url + "/v1/chat/completions", json=body)
            events = 0
            while events < 5:
                if (await resp.content.readline()).startswith(b"data: "):
                    events += 1
            resp.close()
            return events

    assert asyncio.run(hang_up()) == 5
    status = n1.wait_for(lambda s: s["in_flight"] == 0, timeout=5)
    assert all(m["in_flight"] == 0 for m in status["models"])
    deadline = time.monotonic() + 5
    while _hung_up(n1) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _hung_up(n1) == before + 1, "the neuron saw the hang-up (499), not a finished stream"


def _cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex", *args, "--gateway", gw.url],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_status_load_unload_and_pin(gateway: GatewayProcess) -> None:
    resident = "a"
    _chat(gateway, resident)
    gateway.wait_for(lambda p: p[resident] == ["n2"])
    done = _cli(gateway, "unload", resident)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{resident}: unloaded on n2"
    assert gateway.placements()[resident] == []
    done = _cli(gateway, "load", resident, "--node", "n2")
    assert done.returncode == 0 and done.stdout.strip() == f"{resident}: loaded on n2"
    table = _cli(gateway, "status").stdout
    assert re.search(r"^n1\s+up\b", table, re.M) and re.search(r"^n2\s+up\b", table, re.M)
    assert re.search(rf"^{resident}\s+resident\b.*n2/cpu loaded", table, re.M)
    assert re.search(r"^pin\s+resident\s+yes\b", table, re.M)
    raw = json.loads(_cli(gateway, "status", "--json").stdout)
    assert {n["name"] for n in raw["neurons"]} == {"n1", "n2"}
    assert _cli(gateway, "pin", resident).stdout.strip() == f"{resident}: pinned"
    assert _cli(gateway, "unpin", resident).stdout.strip() == f"{resident}: unpinned"
    missing = _cli(gateway, "load", "nope")
    assert missing.returncode == 1 and "404" in missing.stderr and "Traceback" not in missing.stderr


def test_priority_strategy_evicts_lowest_priority(
    neurons: dict[str, NeuronProcess],
    gateway: GatewayProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A second gateway with the priority strategy; the shared one stays up but idle.
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-priority"),
        neurons=neurons,
        models=MODELS,
        eviction={"strategy": "priority"},
    )
    try:
        gw.wait_for(lambda p: len(p["pin"]) == 1)
        _cold(gw, "a", "b", "c")
        _chat(gw, "b")
        _chat(gw, "a")  # a (priority 1) and b (3) resident; a used last
        gw.wait_for(lambda p: p["a"] == ["n2"] and p["b"] == ["n2"])
        _idle(gw, "a", "b")  # until a poll shows them done, both count as busy (not evictable)
        _chat(gw, "c")
        after = gw.wait_for(lambda p: p["c"] == ["n2"])
        assert after["a"] == [], "priority evicts a (lowest) even though it was used last"
        assert after["b"] == ["n2"]
    finally:
        gw.stop()


def test_killed_neuron_fails_over_before_first_byte_and_errors_mid_stream(
    start_neuron: Callable[..., NeuronProcess],
    model_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    neurons = {  # its own pair: this test kills one
        "n1": start_neuron(name="n1", model_roots=[model_root], cpu_memory_budget_gb=1.0),
        "n2": start_neuron(name="n2", model_roots=[model_root], cpu_memory_budget_gb=1.3),
    }
    unpinned = [{**m, "pinned": False} for m in MODELS]  # so n1 may make room
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-kill"), neurons=neurons, models=unpinned, poll_interval_s=30.0
    )
    try:
        on_n2 = "a"
        status, _ = gw.call("POST", f"/cortex/models/{on_n2}/load", {"node": "n2"})
        assert status == 200
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model=on_n2,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=1500,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        got_text = False
        with pytest.raises(openai.APIError) as err:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and not got_text:
                    got_text = True
                    neurons["n2"].proc.kill()  # kill -9 mid-stream
        assert got_text
        assert "n2" in str(err.value)
        # The gateway still believes n2 is up (30 s polls): the next request for the model
        # goes there, fails to connect, and is retried on n1 before any byte reaches us.
        started = time.monotonic()
        body = _chat(gw, on_n2)
        assert body["usage"]["completion_tokens"] >= 1
        assert time.monotonic() - started < 60
        assert gw.placements()[on_n2] == ["n1"]
    finally:
        gw.stop()
