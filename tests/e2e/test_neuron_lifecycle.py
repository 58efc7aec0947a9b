"""Load and unload against a real neuron process with the transformers harness."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.neuron_process import NeuronProcess


@pytest.fixture(scope="module")
def neuron(start_neuron: Callable[..., NeuronProcess], model_root: Path) -> NeuronProcess:
    return start_neuron(
        model_roots=[model_root], harnesses=["transformers"], cpu_memory_budget_gb=2.0
    )


def spec(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "source": "tiny", "harness": "transformers", **extra}


def test_load_is_idempotent_then_unload_frees_it(neuron: NeuronProcess) -> None:
    code, body = neuron.api("POST", "/models/load", spec("a"))
    assert code == 200 and body["already_loaded"] is False
    assert body["model"]["state"] == "loaded" and body["model"]["bytes"] > 0
    code, body = neuron.api("POST", "/models/load", spec("a"))
    assert code == 200 and body["already_loaded"] is True
    code, body = neuron.api("POST", "/models/unload", {"model": "a"})
    assert code == 200 and body["freed_bytes"] > 0
    chat = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert neuron.api("POST", "/v1/chat/completions", chat)[0] == 404
    assert neuron.api("POST", "/models/unload", {"model": "a"})[0] == 404


def test_concurrent_loads_of_one_model_load_once(neuron: NeuronProcess) -> None:
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: neuron.api("POST", "/models/load", spec("b")), range(3)))
    assert [code for code, _ in results] == [200, 200, 200]
    assert sorted(body["already_loaded"] for _, body in results) == [False, True, True]
    assert neuron.log_text().count("loading b from") == 1
    neuron.api("POST", "/models/unload", {"model": "b"})


def test_conflicting_spec_is_409(neuron: NeuronProcess) -> None:
    assert neuron.api("POST", "/models/load", spec("c"))[0] == 200
    code, body = neuron.api("POST", "/models/load", spec("c", dtype="bfloat16"))
    assert code == 409 and body["error"]["code"] == "conflict"
    neuron.api("POST", "/models/unload", {"model": "c"})


def test_too_big_for_the_cpu_budget_is_507(neuron: NeuronProcess) -> None:
    code, body = neuron.api("POST", "/models/load", spec("d", vram_gb=3.0))
    assert code == 507 and body["error"]["code"] == "insufficient_memory"


@pytest.mark.parametrize("source", ["missing", "../tiny", "/etc", "hf:Qwen/Qwen3-0.6B"])
def test_bad_source_is_400(neuron: NeuronProcess, source: str) -> None:
    code, body = neuron.api("POST", "/models/load", spec("e", source=source))
    assert code == 400 and body["error"]["param"] == "source"


def test_unauthenticated_admin_call_is_401(neuron: NeuronProcess) -> None:
    anonymous = NeuronProcess(neuron.proc, neuron.url, "", neuron.log)
    assert anonymous.api("POST", "/models/load", spec("f"))[0] == 401


@pytest.mark.slow
def test_4bit_quantized_load_generates(neuron: NeuronProcess) -> None:
    code, body = neuron.api("POST", "/models/load", spec("q4", quantization="4bit"))
    assert code == 200, body
    assert body["model"]["quantization"] == "4bit"
    chat = {"model": "q4", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    code, body = neuron.api("POST", "/v1/chat/completions", chat)
    assert code == 200 and body["usage"]["completion_tokens"] >= 1
    neuron.api("POST", "/models/unload", {"model": "q4"})
