"""Models the user already has, end to end: a neuron discovers a fake Hugging Face cache (the
demo model as a hub snapshot) and a fake Ollama store (the demo GGUF as a blob), and a real
gateway offers both in GET /v1/models and answers a chat with each. No models.toml entry
names them; no network."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import REPO_ROOT, NeuronProcess
from tests.fake_stores import add_hf_snapshot, add_ollama_model

pytestmark = pytest.mark.slow

HF_ID, OLLAMA_ID = "demo-org/tiny-demo", "tiny-demo:latest"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    demo = pytest.importorskip("cortex_transformers.demo")
    demo_gguf = pytest.importorskip("cortex_transformers.demo_gguf")
    work = tmp_path_factory.mktemp("stores")
    hub, ollama = work / "hf" / "hub", work / "ollama" / "models"
    add_hf_snapshot(hub, HF_ID, demo.write_demo_model(work / "demo"))
    gguf = demo_gguf.write_demo_gguf(work / "demo.gguf")
    add_ollama_model(ollama, OLLAMA_ID, gguf, params={"temperature": 0.2, "top_k": 20})
    return hub, ollama


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Callable[..., NeuronProcess],
    stores: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    hub, ollama = stores
    work = tmp_path_factory.mktemp("discovery")
    neuron = start_neuron(
        name="n1",
        model_roots=[work / "no-models-here"],
        discover=["huggingface", "ollama"],
        huggingface_cache=str(hub),
        ollama_models=str(ollama),
        env={"CORTEX_CACHE": str(work / "cortex-cache")},
    )
    gw = GatewayProcess.start(work / "gw", neurons={"n1": neuron}, models=[])
    yield gw
    gw.stop()


def _cards(gw: GatewayProcess) -> dict[str, dict[str, object]]:
    status, listing = gw.call("GET", "/v1/models")
    assert status == 200
    return {card["id"]: card for card in listing["data"]}


def test_both_stores_are_listed_in_v1_models(gateway: GatewayProcess) -> None:
    cards = _cards(gateway)
    assert {HF_ID, OLLAMA_ID} <= set(cards), cards
    hf, ollama = cards[HF_ID]["cortex"], cards[OLLAMA_ID]["cortex"]
    assert isinstance(hf, dict) and isinstance(ollama, dict)
    # nodes: where it is loaded; a chat test that ran first may have loaded it already
    expected_nodes = [] if hf["state"] == "available" else ["n1"]
    assert hf["state"] in ("available", "loading", "resident") and hf["nodes"] == expected_nodes
    assert hf["context_length"] == 4096  # the snapshot's config.json
    sampling = ollama["sampling"]  # from the params layer
    assert isinstance(sampling, dict)
    assert (sampling["temperature"], sampling["top_k"]) == (0.2, 20)


@pytest.mark.parametrize("model", [HF_ID, OLLAMA_ID])
def test_a_discovered_model_answers_a_chat(
    gateway: GatewayProcess, stores: tuple[Path, Path], model: str
) -> None:
    status, reply = gateway.call(
        "POST",
        "/v1/chat/completions",
        {
            "model": model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 8,
            "temperature": 0,
        },
    )
    assert status == 200, reply
    assert reply["model"] == model
    assert reply["usage"]["completion_tokens"] > 0
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")
    assert gateway.placements()[model] == ["n1"]
    blobs = stores[1] / "blobs"
    assert all(p.name.startswith("sha256-") for p in blobs.iterdir()), "Ollama's store is read only"


def test_an_ollama_client_names_it_as_ollama_does(gateway: GatewayProcess) -> None:
    """Ollama's own API, with the bare name `ollama run` takes for the latest tag."""
    status, reply = gateway.call(
        "POST",
        "/api/chat",
        {
            "model": OLLAMA_ID.removesuffix(":latest"),
            "messages": [{"role": "user", "content": "hello"}],
            "stream": False,
            "options": {"num_predict": 8, "temperature": 0},
        },
    )
    assert status == 200, reply
    assert reply["done"] is True and reply["eval_count"] > 0


def test_cortex_status_names_the_store(gateway: GatewayProcess) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "cortex", "status", "--gateway", gateway.url],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f"{HF_ID}" in shown and "found in the huggingface store of n1" in shown
    assert f"{OLLAMA_ID}" in shown and "found in the ollama store of n1" in shown


@pytest.mark.skipif(not shutil.which("chromium"), reason="Chromium is not installed")
def test_the_dashboard_names_the_store(gateway: GatewayProcess) -> None:
    dom = subprocess.run(
        [
            "chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--virtual-time-budget=5000", "--dump-dom",
            gateway.url + "/ui",
        ],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert f'data-model="{OLLAMA_ID}"' in dom
    assert "found in the ollama store of n1" in dom
    assert "found in the huggingface store of n1" in dom
