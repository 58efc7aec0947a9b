"""Neuron metrics: the per-request arithmetic, and GET /metrics on an in-process neuron."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pynvml
import pytest
from aiohttp.test_utils import TestClient

from cortex.config import ModelsConfig, NeuronConfig, NeuronSection
from cortex.neuron.app import make_app
from cortex.neuron.metrics import NeuronMetrics
from cortex.neuron.outcome import Outcome
from tests.neuron.fakes import FakeHarness
from tests.prometheus_samples import samples, value

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Client = TestClient[Any, Any]


def test_finished_request_records_times_and_tokens() -> None:
    metrics = NeuronMetrics()
    outcome = Outcome()
    outcome.started -= 2.0  # arrived 2 s ago, admitted after 0.5 s, first token after 1 s
    outcome.admitted = outcome.started + 0.5
    outcome.first_token = outcome.started + 1.0
    outcome.prompt_tokens, outcome.completion_tokens = 10, 11
    metrics.finished("m", outcome)
    found = samples(metrics.exposition())
    assert value(found, "cortex_requests_total", model="m", status="200") == 1
    assert value(found, "cortex_queue_wait_seconds_sum", model="m") == pytest.approx(0.5)
    assert value(found, "cortex_time_to_first_token_seconds_sum", model="m") == pytest.approx(1.0)
    tpot = value(found, "cortex_time_per_output_token_seconds_sum", model="m")
    assert tpot == pytest.approx(0.1, abs=0.01)  # ~1 s for the 10 tokens after the first
    assert value(found, "cortex_tokens_total", model="m", kind="prompt") == 10
    assert value(found, "cortex_tokens_total", model="m", kind="completion") == 11


def test_request_never_admitted_is_counted_without_its_model_name() -> None:
    metrics = NeuronMetrics()
    outcome = Outcome()
    outcome.status = 404
    metrics.finished("whatever-the-client-sent", outcome)
    found = samples(metrics.exposition())
    assert value(found, "cortex_requests_total", model="-", status="404") == 1
    assert value(found, "cortex_queue_wait_seconds_count", model="-") == 0


@pytest.fixture
def harness() -> FakeHarness:
    return FakeHarness()


@pytest.fixture
async def client(
    aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, harness: FakeHarness
) -> Client:
    def no_nvml() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_nvml)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "model.safetensors").write_bytes(b"")
    section = NeuronSection(token=TOKEN, model_roots=(str(tmp_path),), cpu_memory_budget_gb=1.0)
    app = make_app(NeuronConfig(neuron=section), ModelsConfig(), {"fake": harness})
    c: Client = await aiohttp_client(app, headers=AUTH)
    return c


async def test_metrics_count_what_clients_were_told(client: Client) -> None:
    load = {"model": "tiny", "source": "tiny", "harness": "fake"}
    assert (await client.post("/models/load", json=load)).status == 200
    bad = await client.post("/models/load", json={**load, "model": "bad", "source": "missing"})
    assert bad.status == 400  # rejected before a load starts: not a failed load
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "say:hello"}]}
    usage = (await (await client.post("/v1/chat/completions", json=chat)).json())["usage"]
    streamed = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    raw = await (await client.post("/v1/chat/completions", json=streamed)).read()
    events = [e.removeprefix("data: ") for e in raw.decode().split("\n\n") if e]
    stream_usage = msgspec.json.decode(events[-2])["usage"]
    missing = await client.post("/v1/chat/completions", json={**chat, "model": "ghost"})
    assert missing.status == 404

    assert (await client.get("/metrics", headers={"Authorization": ""})).status == 401
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    found = samples(await resp.read())
    assert value(found, "cortex_requests_total", model="tiny", status="200") == 2
    assert value(found, "cortex_requests_total", model="-", status="404") == 1
    prompt = usage["prompt_tokens"] + stream_usage["prompt_tokens"]
    completion = usage["completion_tokens"] + stream_usage["completion_tokens"]
    assert value(found, "cortex_tokens_total", model="tiny", kind="prompt") == prompt
    assert value(found, "cortex_tokens_total", model="tiny", kind="completion") == completion
    assert value(found, "cortex_time_to_first_token_seconds_count", model="tiny") == 2
    assert value(found, "cortex_model_loads_total", model="tiny", result="ok") == 1
    assert value(found, "cortex_model_load_seconds_count", model="tiny") == 1
    assert value(found, "cortex_model_resident", model="tiny") == 1
    assert value(found, "cortex_requests_in_flight", model="tiny") == 0
    assert value(found, "cortex_gpu_memory_bytes", device="cpu", state="total") == 1e9
    assert value(found, "cortex_gpu_memory_bytes", device="cpu", state="used") == 10e6


async def test_failed_load_is_counted(client: Client, harness: FakeHarness) -> None:
    harness.fail_with = RuntimeError("weights corrupt")
    load = {"model": "tiny", "source": "tiny", "harness": "fake"}
    assert (await client.post("/models/load", json=load)).status >= 500
    found = samples(await (await client.get("/metrics")).read())
    assert value(found, "cortex_model_loads_total", model="tiny", result="failed") == 1
    assert value(found, "cortex_model_load_seconds_count", model="tiny") == 0
    assert ("cortex_model_resident", frozenset({("model", "tiny")})) not in found
