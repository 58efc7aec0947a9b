"""Idle TTL across real processes: an idle model is unloaded on its own, a pinned one never."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess

pytestmark = pytest.mark.slow

TTL_S = 4.0
MODELS = [
    {"id": "short", "source": "tiny", "vram_gb": 0.3, "context_length": 1024, "ttl_s": TTL_S},
    {"id": "kept", "source": "tiny", "vram_gb": 0.3, "context_length": 1024, "pinned": True},
]


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Callable[..., NeuronProcess],
    model_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    neuron = start_neuron(name="n1", model_roots=[model_root], cpu_memory_budget_gb=1.0)
    # default_ttl_s applies to "kept" too: only its pin keeps it.
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw"),
        neurons={"n1": neuron},
        models=MODELS,
        eviction={"default_ttl_s": 1.0},
    )
    yield gw
    gw.stop()


def _ttl_left(gateway: GatewayProcess, model: str) -> tuple[float | None, Any]:
    """The countdown once a poll has seen the request end (until then the copy is busy)."""
    deadline = time.monotonic() + 3.0
    while True:
        _, status = gateway.call("GET", "/cortex/status")
        [view] = [m for m in status["models"] if m["id"] == model]
        left = view["placements"][0]["ttl_left_s"]
        if left is not None or time.monotonic() > deadline:
            return left, status
        time.sleep(0.1)


def test_idle_model_is_unloaded_after_its_ttl_and_pinned_one_stays(
    gateway: GatewayProcess,
) -> None:
    gateway.wait_for(lambda p: p.get("kept") == ["n1"], timeout=30)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
    client.chat.completions.create(
        model="short", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    served = time.monotonic()
    left, status = _ttl_left(gateway, "short")
    assert left is not None and 0 < left <= TTL_S
    [kept] = [m for m in status["models"] if m["id"] == "kept"]
    assert kept["placements"][0]["ttl_left_s"] is None  # pinned: no countdown

    placements = gateway.wait_for(lambda p: not p.get("short"), timeout=TTL_S + 10)
    idle_for = time.monotonic() - served
    assert idle_for >= TTL_S - 0.5, f"unloaded after only {idle_for:.1f}s"
    assert placements.get("kept") == ["n1"]
    assert "short idle on n1 past its ttl: unloading" in gateway.log_text()
