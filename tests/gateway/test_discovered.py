"""Models neurons discovered in their stores become catalogue entries where models.toml does
not name them: pure merging first, then the fleet and the gateway's catalogue over a fake
neuron client (no HTTP)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from cortex.config import CortexConfig, GatewaySection, ModelEntry, NeuronRef, SamplingDefaults
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.discovered import discovered_entries
from cortex.gateway.fleet import Fleet
from cortex.gateway.neuron_client import NeuronUnreachable
from cortex.gateway.settings import Live, Settings
from cortex.gateway.snapshot import FleetView, NodeView
from cortex.protocol.neuron import DiscoveredModel, NeuronStatus

OLLAMA = DiscoveredModel(
    id="tiny:latest",
    source="ollama:tiny:latest",
    store="ollama",
    format="gguf",
    bytes=900_000,
    sampling=SamplingDefaults(temperature=0.3),
)
HF = DiscoveredModel(
    id="org/tiny",
    source="hf-cache:org/tiny",
    store="huggingface",
    format="safetensors",
    bytes=1_000_000,
    context_length=4096,
)


def status(name: str, *found: DiscoveredModel) -> NeuronStatus:
    return NeuronStatus(
        name=name, version="t", harnesses=["transformers"], devices=[], models=[],
        discovered=list(found),
    )  # fmt: skip


def test_a_discovered_model_is_an_entry_on_the_nodes_that_have_it() -> None:
    found = discovered_entries(
        {"n1": status("n1", OLLAMA, HF), "n2": status("n2", OLLAMA), "n3": None}, {}
    )
    assert sorted(found) == ["org/tiny", "tiny:latest"]
    ollama, hf = found["tiny:latest"], found["org/tiny"]
    assert ollama.store == "ollama" and hf.store == "huggingface"
    assert ollama.entry == ModelEntry(
        id="tiny:latest",
        source="ollama:tiny:latest",
        aliases=("tiny",),  # as `ollama run tiny` means tiny:latest
        nodes=("n1", "n2"),
        sampling=SamplingDefaults(temperature=0.3),
    )
    assert (hf.entry.nodes, hf.entry.context_length, hf.entry.harness) == (
        ("n1",), 4096, "transformers",
    )  # fmt: skip


def test_a_down_node_offers_nothing() -> None:
    assert discovered_entries({"n1": None}, {}) == {}


@pytest.mark.parametrize(
    "named",
    [
        ModelEntry(id="tiny:latest", source="elsewhere", quantization="4bit"),
        ModelEntry(id="tiny", source="ollama:tiny:latest", pinned=True),
    ],
    ids=["same-id", "same-source"],
)
def test_models_toml_wins_by_id_or_by_source(named: ModelEntry) -> None:
    found = discovered_entries({"n1": status("n1", OLLAMA, HF)}, {named.id: named})
    assert sorted(found) == ["org/tiny"]


class Client:
    """Each node's status, or NeuronUnreachable when it is None."""

    def __init__(self, statuses: dict[str, NeuronStatus | None]) -> None:
        self.statuses = statuses

    async def status(self, ref: NeuronRef, timeout_s: float) -> NeuronStatus:
        found = self.statuses[ref.name]
        if found is None:
            raise NeuronUnreachable(f"{ref.name} is down")
        return found

    async def post(self, ref: NeuronRef, path: str, body: bytes, timeout_s: float) -> bytes:
        raise AssertionError("nothing is loaded here")


async def fleet(
    statuses: dict[str, NeuronStatus | None], models: Mapping[str, ModelEntry]
) -> Fleet:
    config = CortexConfig(
        gateway=GatewaySection(poll_interval_s=60),
        neurons=tuple(NeuronRef(name=n, endpoint=f"http://{n}.invalid") for n in statuses),
    )
    session: Any = None
    live = Live.of(config, list(models.values()))
    made = Fleet(live, Catalogue(live), session, Client(statuses))
    await made.start()
    return made


def _ids(made: Fleet) -> list[str]:
    return [m.id for m in made.catalogue.view().models]


async def test_the_fleet_catalogue_follows_what_the_neurons_report() -> None:
    configured = ModelEntry(id="qwen", source="Qwen3-8B")
    statuses: dict[str, NeuronStatus | None] = {"n1": status("n1", OLLAMA)}
    made = await fleet(statuses, {"qwen": configured})
    try:
        assert _ids(made) == ["qwen", "tiny:latest"]
        before = made.catalogue.view()
        await made._poll(made.neurons["n1"])
        assert made.catalogue.view() is before, "an unchanged report keeps the same entries"
        statuses["n1"] = status("n1", OLLAMA, HF)
        await made._poll(made.neurons["n1"])
        assert _ids(made) == ["qwen", "org/tiny", "tiny:latest"]
        statuses["n1"] = None
        await made._poll(made.neurons["n1"])
        await made._poll(made.neurons["n1"])  # two failed polls: down
        assert _ids(made) == ["qwen"]
        # SIGHUP: models.toml now names the Ollama model by its source, under its own id
        statuses["n1"] = status("n1", OLLAMA)
        await made._poll(made.neurons["n1"])
        named = ModelEntry(id="tiny", source="ollama:tiny:latest", aliases=("small-*",))
        made.live.settings = Settings(made.config, (named,))
        await made.reconfigure()
        assert _ids(made) == ["tiny"]
    finally:
        await made.stop()


async def test_discovered_models_are_listed_after_models_toml() -> None:
    made = await fleet(
        {"n1": status("n1", OLLAMA, HF)}, {"qwen": ModelEntry(id="qwen", source="Qwen3-8B")}
    )
    try:
        merged = made.catalogue.view()
        view = FleetView(nodes=(NodeView(name="n1", health="up"),))
        cards = merged.model_cards(view, {})
        assert [c.id for c in cards] == ["qwen", "org/tiny", "tiny:latest"]
        assert all(c.cortex is not None and c.cortex.state == "available" for c in cards)
        assert cards[1].cortex is not None and cards[1].cortex.context_length == 4096
        assert merged.resolve("tiny:latest") is merged.resolve("tiny") is not None
        assert merged.stores == {"org/tiny": "huggingface", "tiny:latest": "ollama"}
        # A node that did not report it does not make it available
        other = FleetView(nodes=(NodeView(name="n2", health="up"),))
        assert [c.id for c in merged.model_cards(other, {})] == ["qwen"]
    finally:
        await made.stop()
