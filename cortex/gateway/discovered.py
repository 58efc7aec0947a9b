"""Models the neurons found in other programs' stores, as catalogue entries. Pure.

Each neuron's /status lists what its enabled stores hold (neuron.toml ``discover``: the Hugging
Face cache, Ollama's store). Such a model becomes a catalogue entry unless models.toml already
names it, by id or by source (an entry with ``source = "ollama:llama3.2:1b"`` under an id and
settings of its own): models.toml wins. The entry may be placed only on the nodes that reported
it (its ``nodes``), since the files are theirs.

The defaults (what an entry that names only ``id`` and ``source`` gets): harness
"transformers", quantization "none", dtype "auto", ``vram_gb`` 0 (the neuron's estimate from
the weights reserves the memory), the store's context length and sampling settings, not
pinned, the default idle TTL; no aliases, except that an Ollama model tagged ``latest`` also
answers to its bare name (``llama3.2`` for ``llama3.2:latest``), as ``ollama run`` does.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from cortex.config import ModelEntry, Store
from cortex.protocol.neuron import DiscoveredModel, NeuronStatus


class Found(msgspec.Struct, frozen=True):
    """A discovered model's catalogue entry and the store it came from."""

    entry: ModelEntry
    store: Store


def discovered_entries(
    statuses: Mapping[str, NeuronStatus | None], configured: Mapping[str, ModelEntry]
) -> dict[str, Found]:
    """Model id -> entry for every model a live neuron discovered that models.toml does not
    name. ``statuses``: node name -> its last status (None: down, its models not offered)."""
    named_sources = {entry.source for entry in configured.values()}
    reporters: dict[str, list[str]] = {}
    first: dict[str, DiscoveredModel] = {}
    for node in sorted(statuses):
        status = statuses[node]
        for model in status.discovered if status is not None else ():
            if model.id in configured or model.source in named_sources:
                continue
            first.setdefault(model.id, model)
            reporters.setdefault(model.id, []).append(node)
    return {
        model_id: Found(_entry(model, tuple(reporters[model_id])), model.store)
        for model_id, model in sorted(first.items())
    }


LATEST = ":latest"


def _entry(model: DiscoveredModel, nodes: tuple[str, ...]) -> ModelEntry:
    bare = model.store == "ollama" and model.id.endswith(LATEST)
    return ModelEntry(
        id=model.id,
        source=model.source,
        aliases=(model.id.removesuffix(LATEST),) if bare else (),
        nodes=nodes,
        context_length=model.context_length,
        sampling=model.sampling,
    )
