"""Runtime pins across real processes: they survive a gateway restart, and a cold load that a
runtime pin arrived during is kept even when the client that caused it hangs up."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess

pytestmark = pytest.mark.slow

MODELS = [{"id": m, "source": "tiny", "vram_gb": 0.3, "context_length": 1024} for m in ("x", "y")]


def _pinned(gw: GatewayProcess) -> dict[str, bool]:
    _, status = gw.call("GET", "/cortex/status")
    return {m["id"]: m["pinned"] for m in status["models"]}


def _wait_model(
    gw: GatewayProcess, model: str, predicate: Callable[[dict[str, Any]], bool]
) -> None:
    """Poll /cortex/status until ``predicate`` holds for ``model``'s entry (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        _, status = gw.call("GET", "/cortex/status")
        [view] = [m for m in status["models"] if m["id"] == model]
        if predicate(view):
            return
        assert time.monotonic() < deadline, view
        time.sleep(0.05)


def _send_and_hang_up_later(gw: GatewayProcess, model: str) -> socket.socket:
    """Send a streaming chat request by hand; the caller closes the socket to hang up."""
    url = urlsplit(gw.url)
    body = json.dumps(
        {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def test_runtime_pin_survives_restart_and_a_hang_up_during_its_cold_load(
    start_neuron: Callable[..., NeuronProcess], model_root: Path, tmp_path: Path
) -> None:
    neuron = start_neuron(name="n1", model_roots=[model_root], cpu_memory_budget_gb=1.0)
    gw = GatewayProcess.start(tmp_path, neurons={"n1": neuron}, models=MODELS)
    try:
        # A client starts a cold load of y, the operator pins y meanwhile, the client leaves.
        sock = _send_and_hang_up_later(gw, "y")
        _wait_model(gw, "y", lambda m: m["state"] == "loading" and m["queued"] == 1)
        status, _ = gw.call("POST", "/cortex/models/y/pin")
        assert status == 200
        sock.close()
        _wait_model(gw, "y", lambda m: m["queued"] == 0)  # the client has left
        # The loader decides keep or unload in the same step as it logs the load's end, so
        # once that line is written the decision is too, whether the hang-up came first
        # ("keeping y although ...") or the load did (nothing to decide).
        gw.wait_for_log("loaded y on n1", timeout=30)
        assert "unloading y again" not in gw.log_text()
        assert gw.placements().get("y") == ["n1"]
    finally:
        gw.stop()
    assert json.loads((tmp_path / "cortex-state.json").read_text()) == {"pins": {"y": True}}

    # Restart with y unloaded: the new gateway knows y is pinned and loads it again.
    status, _ = neuron.api("POST", "/models/unload", {"model": "y"})
    assert status == 200
    gw = GatewayProcess.start(tmp_path, neurons={"n1": neuron}, models=MODELS)
    try:
        assert _pinned(gw) == {"x": False, "y": True}
        gw.wait_for(lambda p: p.get("y") == ["n1"], timeout=30)
    finally:
        gw.stop()


def _listed_pins(gw: GatewayProcess) -> dict[str, bool]:
    _, listing = gw.call("GET", "/v1/models")
    return {card["id"]: card["cortex"]["pinned"] for card in listing["data"]}


def test_models_list_and_status_agree_on_pins_after_pin_and_unpin(
    start_neuron: Callable[..., NeuronProcess], model_root: Path, tmp_path: Path
) -> None:
    """Issue 25: ``cortex unpin`` of a model pinned in models.toml left /v1/models saying
    pinned while /cortex/status said not."""
    neuron = start_neuron(name="n1", model_roots=[model_root], cpu_memory_budget_gb=1.0)
    models = [{**MODELS[0], "pinned": True}, MODELS[1]]
    gw = GatewayProcess.start(tmp_path, neurons={"n1": neuron}, models=models)
    try:
        assert _listed_pins(gw) == _pinned(gw) == {"x": True, "y": False}
        assert gw.call("POST", "/cortex/models/x/unpin")[0] == 200
        assert gw.call("POST", "/cortex/models/y/pin")[0] == 200
        assert _listed_pins(gw) == _pinned(gw) == {"x": False, "y": True}
    finally:
        gw.stop()
