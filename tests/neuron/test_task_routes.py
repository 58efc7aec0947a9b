"""/v1/completions and /v1/embeddings against a harness that implements neither (the scripted
FakeHarness): the model's task and the optional Harness methods decide, each refusal a 400."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pynvml
import pytest
from aiohttp.test_utils import TestClient

from cortex.config import ModelsConfig, NeuronConfig, NeuronSection
from cortex.neuron.app import make_app
from tests.neuron.fakes import FakeHarness

AUTH = {"Authorization": "Bearer t"}
Client = TestClient[Any, Any]


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Client:
    def missing() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "model.safetensors").write_bytes(b"")
    section = NeuronSection(token="t", model_roots=(str(tmp_path),), cpu_memory_budget_gb=1.0)
    app = make_app(NeuronConfig(neuron=section), ModelsConfig(), {"fake": FakeHarness()})
    client: Client = await aiohttp_client(app, headers=AUTH)
    resp = await client.post(
        "/models/load",
        json={"model": "tiny", "source": "tiny", "harness": "fake", "context_length": 200},
    )
    assert resp.status == 200
    return client


async def _post(client: Client, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    resp = await client.post(path, json=body)
    return resp.status, await resp.json()


async def test_a_load_for_a_task_the_harness_cannot_serve_fails_with_400(client: Client) -> None:
    status, body = await _post(
        client,
        "/models/load",
        {"model": "vec", "source": "tiny", "harness": "fake", "task": "embed"},
    )
    assert status == 400 and body["error"]["param"] == "task"
    listed = await (await client.get("/status")).json()
    assert {m["id"]: m["state"] for m in listed["models"]}["vec"] == "failed"


async def test_a_generate_model_refuses_embeddings_naming_its_task(client: Client) -> None:
    status, body = await _post(client, "/v1/embeddings", {"model": "tiny", "input": "hi"})
    assert status == 400 and 'task = "generate"' in body["error"]["message"]


async def test_a_harness_without_encode_prompt_refuses_raw_prompts(client: Client) -> None:
    status, body = await _post(client, "/v1/completions", {"model": "tiny", "prompt": "hi"})
    assert status == 400 and "encode_prompt" in body["error"]["message"]
    status, body = await _post(
        client, "/v1/completions", {"model": "tiny", "prompt": [1, 2], "echo": True}
    )
    assert status == 400 and body["error"]["param"] == "prompt"


async def test_token_prompts_complete_without_encode_prompt(client: Client) -> None:
    status, body = await _post(
        client, "/v1/completions", {"model": "tiny", "prompt": [65, 66], "max_tokens": 3}
    )
    assert status == 200 and body["object"] == "text_completion"
    assert (
        body["choices"][0]["text"] == "ababab" and body["choices"][0]["finish_reason"] == "length"
    )
    assert body["usage"]["prompt_tokens"] == 2 and body["usage"]["completion_tokens"] == 3


async def test_a_stream_is_text_chunks_then_finish_usage_and_done(client: Client) -> None:
    resp = await client.post(
        "/v1/completions",
        json={
            "model": "tiny",
            "prompt": [65],
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    raw = (await resp.read()).decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert '"text":"ab"' in events[0] and '"finish_reason":"length"' in events[-3]
    assert '"choices":[]' in events[-2] and '"completion_tokens":2' in events[-2]


async def test_the_model_list_carries_the_window(client: Client) -> None:
    listed = await (await client.get("/v1/models")).json()
    (card,) = listed["data"]
    assert card["max_model_len"] == card["context_length"] == 200
    assert card["max_output_tokens"] == 50
