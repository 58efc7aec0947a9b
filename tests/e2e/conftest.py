"""Shared e2e fixtures: the demo model, built once per session, and a neuron factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.neuron_process import NeuronProcess


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
