"""One tiny demo model per session, loaded once; tests needing other load options load their own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cortex_transformers.demo import write_demo_model
from cortex_transformers.harness import TransformersHarness, TransformersModel

from cortex.neuron.harness import LoadOptions
from cortex.protocol.neuron import LoadRequest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("demo"))


def load(path: Path, options: LoadOptions | None = None, **request: object) -> TransformersModel:
    """Load ``path`` on the CPU with the given LoadRequest fields."""
    spec = LoadRequest(model="demo", source=str(path), **request)  # type: ignore[arg-type]
    options = options or LoadOptions()
    model = TransformersHarness().load(spec, str(path), "cpu", options, lambda f, s: None)
    assert isinstance(model, TransformersModel)
    return model


@pytest.fixture(scope="session")
def demo(demo_dir: Path) -> Iterator[TransformersModel]:
    model = load(demo_dir)
    yield model
    model.unload()
