"""One running config and one catalogue: a reload swaps the settings whole for every component,
and /v1/models and /cortex/status give the same answer through load, pin, unpin, reload and
restart. An in-process gateway over HTTP with a fake neuron served on loopback (no sleeps: waits
are on the fleet's own status updates, with a deadline)."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

import cortex.gateway
from cortex import config as cfg
from cortex.gateway.app import make_app
from cortex.gateway.core import GATEWAY, Gateway
from cortex.gateway.reload import reload
from tests.e2e.neuron_process import toml_table
from tests.gateway.test_faults import FaultyNeuron

X = {"id": "x", "source": "x", "vram_gb": 1.0, "pinned": True}
Y = {"id": "y", "source": "y", "vram_gb": 1.0}
Z = {"id": "z", "source": "z", "vram_gb": 1.0}
State = dict[str, tuple[str, bool]]  # model id -> (state, pinned)


@pytest.fixture
async def neuron() -> AsyncIterator[tuple[FaultyNeuron, str]]:
    fake = FaultyNeuron(load_s=0.01)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


def _write(work: Path, neuron_url: str, models: list[dict[str, Any]], **gateway: Any) -> Path:
    section: dict[str, Any] = {
        "listen": "127.0.0.1:1",
        "metrics_listen": "127.0.0.1:2",
        "poll_interval_s": 0.05,
    }
    (work / "cortex.toml").write_text(
        toml_table("gateway", section | gateway)
        + toml_table("[neurons]", {"name": "n1", "endpoint": neuron_url})
    )
    (work / "models.toml").write_text("".join(toml_table("[models]", m) for m in models))
    return work / "cortex.toml"


async def _start(path: Path) -> TestServer:
    """The gateway as ``serve`` builds it from the files (the state file beside them)."""
    config = cfg.load_cortex(path)
    models = cfg.load_models(cfg.resolve_relative(path, config.gateway.models))
    app = make_app(config, models, cfg.resolve_relative(path, config.gateway.state_file))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def _agreed(http: aiohttp.ClientSession, server: TestServer) -> State | None:
    """What /v1/models says of each model, after checking /cortex/status says the same; None
    when the fleet or the catalogue moved between the two requests (a poll, a load ending)."""
    gateway = server.app[GATEWAY]
    before = (gateway.fleet.view(), gateway.catalogue.view())
    async with http.get(server.make_url("/v1/models")) as resp:
        listed = {
            c["id"]: (c["cortex"]["state"], c["cortex"]["pinned"])
            for c in (await resp.json())["data"]
        }
    async with http.get(server.make_url("/cortex/status")) as resp:
        status = {m["id"]: (m["state"], m["pinned"]) for m in (await resp.json())["models"]}
    if (gateway.fleet.view(), gateway.catalogue.view()) != before:
        return None
    assert listed == status
    return listed


async def _until(http: aiohttp.ClientSession, server: TestServer, expected: State) -> None:
    """Wait (on the fleet's status updates, 20 s at most) until both routes say ``expected``."""
    fleet = server.app[GATEWAY].fleet
    deadline = asyncio.get_running_loop().time() + 20
    while (seen := await _agreed(http, server)) != expected:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"expected {expected}, last seen {seen}"
        if seen is not None:
            await fleet.changed(left)


async def _act(http: aiohttp.ClientSession, server: TestServer, model: str, action: str) -> None:
    async with http.post(server.make_url(f"/cortex/models/{model}/{action}")) as resp:
        assert resp.status == 200, await resp.text()


async def test_models_list_and_status_agree_through_load_pin_unpin_reload_and_restart(
    neuron: tuple[FaultyNeuron, str], tmp_path: Path
) -> None:
    fake, url = neuron
    path = _write(tmp_path, url, [X, Y])
    server = await _start(path)
    try:
        async with aiohttp.ClientSession() as http:
            # x is pinned in models.toml: loaded at start-up
            await _until(http, server, {"x": ("resident", True), "y": ("available", False)})
            # y loading (held by the fake), then loaded
            fake.hold = asyncio.Event()
            fake.loading.clear()
            load = asyncio.create_task(_act(http, server, "y", "load"))
            await asyncio.wait_for(fake.loading.wait(), 10)
            await _until(http, server, {"x": ("resident", True), "y": ("loading", False)})
            fake.hold.set()
            await load
            await _until(http, server, {"x": ("resident", True), "y": ("resident", False)})
            # Issue 25: unpinning a model models.toml pins left /v1/models saying pinned
            await _act(http, server, "x", "unpin")
            await _act(http, server, "y", "pin")
            await _until(http, server, {"x": ("resident", False), "y": ("resident", True)})
            await _act(http, server, "x", "unload")
            await _until(http, server, {"x": ("available", False), "y": ("resident", True)})
            # A reload adds z; the runtime unpin of x outlives it (models.toml still pins x)
            _write(tmp_path, url, [X, Y, Z])
            assert await reload(server.app[GATEWAY], path)
            after = {"x": ("available", False), "y": ("resident", True), "z": ("available", False)}
            await _until(http, server, after)
            await server.close()
            # A restart reads the pins back from the state file and the copies from the neuron
            server = await _start(path)
            await _until(http, server, after)
    finally:
        await server.close()


async def test_a_reload_reaches_every_component_at_once(
    neuron: tuple[FaultyNeuron, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = neuron
    path = _write(tmp_path, url, [Y])
    server = await _start(path)
    try:
        gateway: Gateway = server.app[GATEWAY]
        gateway.catalogue.set_pin("y", True)
        before = gateway.live.settings
        _write(
            tmp_path,
            url,
            [Y, Z],
            queue_depth=7,
            first_byte_timeout_s=9.0,
            connect_timeout_s=3.0,
            keepalive_timeout_s=5.0,
        )
        assert await reload(gateway, path)
        settings = gateway.live.settings
        assert settings is not before
        for component in (gateway, gateway.loader, gateway.fleet):
            assert component.config is settings.config, type(component).__name__
        assert settings.config.gateway.queue_depth == 7
        assert (settings.timeout.sock_read, settings.timeout.connect) == (9.0, 3.0)
        assert [m.id for m in gateway.catalogue.view().models] == ["y", "z"]
        assert gateway.catalogue.pinned("y"), "a runtime pin outlives a reload"
        # aiohttp's server took keepalive_timeout_s at start: the log says a restart applies it
        assert "apply only after a restart: keepalive_timeout_s" in caplog.text
        # An invalid edit keeps the running settings whole, the very same object
        (tmp_path / "cortex.toml").write_text("[gateway]\nqueue_depth = 0\n")
        assert not await reload(gateway, path)
        assert gateway.live.settings is settings
    finally:
        await server.close()


def _assigned_attributes(names: set[str]) -> list[str]:
    """``path:line attr`` for every assignment to an attribute named in ``names`` under
    cortex/gateway."""
    found = []
    root = Path(cortex.gateway.__file__).parent
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            else:
                continue
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr in names:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {target.attr}")
    return found


def test_only_live_holds_the_settings_and_only_reload_swaps_them() -> None:
    """No component keeps a config of its own (a stale copy after a reload); the one
    ``Live.settings`` is set at construction and by ``reload``."""
    assigned = [a.split(":")[0] for a in _assigned_attributes({"config", "settings"})]
    assert assigned == ["reload.py", "settings.py"], _assigned_attributes({"config", "settings"})
