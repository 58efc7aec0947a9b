"""The running neuron as one object: config, harnesses and the model manager, plus /status.

Stored in the aiohttp app under ``NODE`` once start-up has opened the devices.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from aiohttp import web

import cortex
from cortex.config import ModelsConfig, NeuronConfig
from cortex.neuron.harness import Harness
from cortex.neuron.lifecycle import ModelManager
from cortex.protocol.neuron import LoadRequest, NeuronStatus


class Node:
    def __init__(
        self,
        config: NeuronConfig,
        models: ModelsConfig,
        harnesses: Mapping[str, Harness],
        manager: ModelManager,
    ) -> None:
        self.config = config
        self.catalogue = {entry.id: entry for entry in models.models}
        self.harnesses = harnesses
        self.manager = manager
        self.started_at = time.time()

    def status(self) -> NeuronStatus:
        return NeuronStatus(
            name=self.config.neuron.name,
            version=cortex.__version__,
            harnesses=sorted(self.harnesses),
            devices=self.manager.devices(),
            models=self.manager.models(),
            in_flight=self.manager.running,
            max_concurrency=self.config.neuron.max_concurrency,
            started_at=self.started_at,
        )

    def preload_request(self, model_id: str) -> LoadRequest:
        """The load a ``preload`` id stands for, from its models.toml entry (KeyError if none)."""
        return LoadRequest.from_entry(self.catalogue[model_id])


NODE = web.AppKey("cortex.neuron.node", Node)
