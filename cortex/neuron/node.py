"""The running neuron as one object: config, harnesses and the model manager, plus /status.

Stored in the aiohttp app under ``NODE`` once start-up has opened the devices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping

from aiohttp import web

import cortex
from cortex.config import ModelsConfig, NeuronConfig
from cortex.errors import CortexError
from cortex.neuron.harness import Harness
from cortex.neuron.lifecycle import ModelManager
from cortex.protocol.neuron import LoadRequest, NeuronStatus

log = logging.getLogger("cortex.neuron")


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
        self._preloads: set[asyncio.Task[None]] = set()

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
            discovered=self.manager.stores.discovered(),
        )

    def start_preloads(self, model_ids: Iterable[str]) -> None:
        """Load these ids in the background (at start-up, and new ones on SIGHUP)."""
        for model_id in model_ids:
            task = asyncio.create_task(self._preload(model_id), name=f"preload-{model_id}")
            self._preloads.add(task)
            task.add_done_callback(self._preloads.discard)

    async def stop_preloads(self) -> None:
        tasks = list(self._preloads)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _preload(self, model_id: str) -> None:
        """Load a ``preload`` id from its models.toml entry; failures are logged, not raised."""
        entry = self.catalogue.get(model_id)
        if entry is None:
            log.error("preload %r: not in the models file; skipped", model_id)
            return
        try:
            await self.manager.load(LoadRequest.from_entry(entry))
        except CortexError as exc:
            log.error("preload %r failed: %s", model_id, exc.message)


NODE = web.AppKey("cortex.neuron.node", Node)
