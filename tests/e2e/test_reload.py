"""SIGHUP re-reads cortex.toml and models.toml on a live gateway without dropping requests.

A real gateway process and neuron; the upstream is the mock OpenAI server (a test double for a
vLLM-style endpoint), served from a thread so the gateway can poll it while the test blocks.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess, toml_table
from tests.e2e.threaded_server import ThreadedServer
from tests.gateway.mock_upstream import MockState, make_mock_upstream

pytestmark = pytest.mark.slow

MODEL_A = {"id": "a", "source": "tiny", "vram_gb": 0.3, "context_length": 1024}
MODEL_B = {"id": "b", "source": "tiny", "vram_gb": 0.3, "context_length": 1024}


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    server = ThreadedServer(make_mock_upstream(MockState()))
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Callable[..., NeuronProcess],
    model_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    neuron = start_neuron(name="n1", model_roots=[model_root], cpu_memory_budget_gb=1.0)
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw"), neurons={"n1": neuron}, models=[MODEL_A]
    )
    yield gw
    gw.stop()


def _workdir(gw: GatewayProcess) -> Path:
    return gw.log.parent


def _model_ids(gw: GatewayProcess) -> set[str]:
    _, listing = gw.call("GET", "/v1/models")
    return {m["id"] for m in listing["data"]}


def _hup_and_wait(gw: GatewayProcess, log_line: str, timeout: float = 15.0) -> None:
    seen = gw.log_text().count(log_line)
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while gw.log_text().count(log_line) <= seen:
        assert gw.proc.poll() is None, "the gateway died on SIGHUP"
        assert time.monotonic() < deadline, f"no {log_line!r} in the log:\n{gw.log_text()[-2000:]}"
        time.sleep(0.1)


def test_sighup_adds_upstream_and_model_and_keeps_old_config_on_bad_edit(
    gateway: GatewayProcess, upstream_url: str
) -> None:
    work = _workdir(gateway)
    base_config = (work / "cortex.toml").read_text()
    assert _model_ids(gateway) == {"a"}

    # 1. Add an upstream and a model: both are served without a restart.
    (work / "cortex.toml").write_text(
        base_config + toml_table("[upstreams]", {"name": "mock", "endpoint": upstream_url})
    )
    (work / "models.toml").write_text(
        toml_table("[models]", MODEL_A) + toml_table("[models]", MODEL_B)
    )
    _hup_and_wait(gateway, "reloaded ")
    assert {"a", "b", "mock-gpt"} <= _model_ids(gateway)
    assert "upstream mock added" in gateway.log_text()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    messages: list = [{"role": "user", "content": "hi"}]
    done = client.chat.completions.create(model="b", messages=messages, max_tokens=2)
    assert done.choices[0].finish_reason in ("stop", "length")
    slow = client.chat.completions.create(model="mock-slow", messages=messages, stream=True)
    chunks = iter(slow)
    next(chunks)  # the stream is running on the upstream

    # 2. An invalid edit is refused with --check's one line; the running config stays.
    (work / "models.toml").write_text('[[models]]\nid = "c"\n')
    _hup_and_wait(gateway, "reload refused")
    assert "models.toml: models[0]: Object missing required field `source`" in gateway.log_text()
    assert {"a", "b", "mock-gpt"} <= _model_ids(gateway)

    # 3. Removing the upstream stops offering it, but its stream in flight runs to the end.
    (work / "cortex.toml").write_text(base_config)
    (work / "models.toml").write_text(toml_table("[models]", MODEL_A))
    _hup_and_wait(gateway, "upstream mock removed")
    assert "b unloaded from n1" in gateway.log_text()
    deadline = time.monotonic() + 15
    while _model_ids(gateway) != {"a"}:
        assert time.monotonic() < deadline, _model_ids(gateway)
        time.sleep(0.2)
    rest = list(chunks)
    assert rest[-1].choices[0].finish_reason == "stop", "the in-flight stream was cut off"
    assert len(rest) > 100


def test_sighup_on_a_neuron_preloads_new_ids_and_survives_a_bad_edit(
    start_neuron: Callable[..., NeuronProcess], model_root: Path
) -> None:
    neuron = start_neuron(
        name="n2",
        model_roots=[model_root],
        cpu_memory_budget_gb=1.0,
        models=[{"id": "warm", "source": "tiny", "context_length": 512}],
    )
    config = neuron.log.parent / "neuron.toml"
    text = config.read_text()
    assert text.startswith("preload = []\n")

    config.write_text("preload = [1]\n" + text.split("\n", 1)[1])  # invalid: not a name
    neuron.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while "reload refused" not in neuron.log_text():
        assert neuron.proc.poll() is None, "the neuron died on SIGHUP"
        assert time.monotonic() < deadline, neuron.log_text()[-2000:]
        time.sleep(0.1)
    assert "neuron.toml: preload[0]" in neuron.log_text()

    config.write_text('preload = ["warm"]\n' + text.split("\n", 1)[1])
    neuron.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while True:
        _, status = neuron.api("GET", "/status")
        if [m["state"] for m in status["models"] if m["id"] == "warm"] == ["loaded"]:
            break
        assert time.monotonic() < deadline, neuron.log_text()[-2000:]
        time.sleep(0.2)
