"""Model lookup by id or alias, and the GET /v1/models listing."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from cortex.config import CortexConfig, SamplingDefaults
from cortex.gateway.catalogue import Catalogue, CatalogueView, CortexModelInfo
from cortex.gateway.pins import PinStore
from cortex.gateway.settings import Live, Settings
from cortex.gateway.snapshot import FleetView
from cortex.protocol.openai import ModelCard, ModelList
from tests.gateway.fleets import entry, fleet, model, node

CATALOGUE = CatalogueView(
    [
        entry("qwen3-32b", 20, aliases=("claude-*-opus-*", "claude-opus-*"), context_length=32768),
        entry("qwen3-8b", 8, aliases=("claude-*-sonnet-*", "claude-*"), pinned=True),
        entry("claude-3-haiku", 4, nodes=("edge",)),
    ]
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("qwen3-8b", "qwen3-8b", id="exact-id"),
        pytest.param("claude-3-haiku", "claude-3-haiku", id="exact-id-beats-an-earlier-alias"),
        pytest.param("claude-3-7-sonnet-20250219", "qwen3-8b", id="glob-alias"),
        pytest.param("claude-opus-4-1", "qwen3-32b", id="first-model-whose-alias-matches"),
        pytest.param("claude-4-opus-x", "qwen3-32b", id="declaration-order-wins-over-a-catch-all"),
        pytest.param("claude-instant", "qwen3-8b", id="catch-all-alias"),
        pytest.param("Qwen3-8B", None, id="case-sensitive"),
        pytest.param("gpt-4o", None, id="unknown-name"),
    ],
)
def test_resolve_exact_id_then_aliases(name: str, expected: str | None) -> None:
    found = CATALOGUE.resolve(name)
    assert (found.id if found else None) == expected


def cards(view: FleetView, upstreams: dict[str, list[str]] | None = None) -> dict[str, object]:
    """id -> (state, nodes, context_length, pinned, owned_by), in listing order."""
    listed = CATALOGUE.model_cards(view, upstreams or {})
    return {c.id: _summary(c) for c in listed}


def _summary(card: ModelCard) -> tuple[str, list[str], int, bool, str]:
    assert card.cortex is not None
    info = card.cortex
    return (info.state, info.nodes, info.context_length, info.pinned, card.owned_by)


@pytest.mark.parametrize(
    ("view", "upstreams", "expected"),
    [
        pytest.param(
            fleet(node("gpu1")),
            {},
            {
                "qwen3-32b": ("available", [], 32768, False, "cortex"),
                "qwen3-8b": ("available", [], 0, True, "cortex"),
            },
            id="catalogue-models-a-live-node-may-serve",
        ),
        pytest.param(
            fleet(node("gpu1"), node("edge", health="suspect")),
            {},
            {
                "qwen3-32b": ("available", [], 32768, False, "cortex"),
                "qwen3-8b": ("available", [], 0, True, "cortex"),
                "claude-3-haiku": ("available", [], 0, False, "cortex"),
            },
            id="suspect-node-counts-as-live",
        ),
        pytest.param(
            fleet(node("gpu1", health="down"), node("edge", health="down")),
            {},
            {},
            id="every-node-down-lists-nothing-local",
        ),
        pytest.param(
            fleet(
                node(
                    "gpu1",
                    model("qwen3-8b", 8, in_flight=1),
                    model("qwen3-32b", 20, state="loading", device="cuda:1", age_s=None),
                    gpus=(24, 24),
                ),
                node("gpu2", model("qwen3-8b", 8)),
            ),
            {},
            {
                "qwen3-32b": ("loading", ["gpu1"], 32768, False, "cortex"),
                "qwen3-8b": ("resident", ["gpu1", "gpu2"], 0, True, "cortex"),
            },
            id="resident-and-loading-with-their-nodes",
        ),
        pytest.param(
            fleet(node("gpu1", model("claude-3-haiku", 4)), node("edge", health="down")),
            {},
            {
                "qwen3-32b": ("available", [], 32768, False, "cortex"),
                "qwen3-8b": ("available", [], 0, True, "cortex"),
                "claude-3-haiku": ("resident", ["gpu1"], 0, False, "cortex"),
            },
            id="resident-outside-its-allowed-nodes-is-listed",
        ),
        pytest.param(
            fleet(
                node("gpu1", model("stray", context_length=4096)),
                node("gpu2", model("gone", state="unloading")),
            ),
            {},
            {
                "qwen3-32b": ("available", [], 32768, False, "cortex"),
                "qwen3-8b": ("available", [], 0, True, "cortex"),
                "stray": ("resident", ["gpu1"], 4096, False, "cortex"),
            },
            id="resident-model-outside-the-catalogue",
        ),
        pytest.param(
            fleet(node("gpu1", health="down")),
            {"openai": ["gpt-4o"], "lab": ["qwen3-8b", "gpt-4o"]},
            {
                "qwen3-8b": ("resident", ["lab"], 0, False, "lab"),
                "gpt-4o": ("resident", ["lab", "openai"], 0, False, "lab"),
            },
            id="upstream-models-are-always-resident",
        ),
        pytest.param(
            fleet(node("gpu1")),
            {"lab": ["qwen3-8b"]},
            {
                "qwen3-32b": ("available", [], 32768, False, "cortex"),
                "qwen3-8b": ("resident", ["lab"], 0, True, "cortex"),
            },
            id="model-both-local-and-upstream-is-one-card",
        ),
    ],
)
def test_model_cards(
    view: FleetView, upstreams: dict[str, list[str]], expected: dict[str, object]
) -> None:
    listed = cards(view, upstreams)
    assert listed == expected
    assert list(listed) == list(expected)  # order too


def test_model_list_encodes_the_cortex_object() -> None:
    listed = ModelList(data=CATALOGUE.model_cards(fleet(node("gpu1", model("qwen3-8b", 8))), {}))
    wire = msgspec.json.decode(msgspec.json.encode(listed))
    assert wire["data"][1]["id"] == "qwen3-8b"
    assert wire["data"][1]["cortex"] == {
        "state": "resident",
        "nodes": ["gpu1"],
        "context_length": 0,
        "pinned": True,
        "sampling": None,
    }
    assert msgspec.json.decode(msgspec.json.encode(listed), type=ModelList) == listed
    assert isinstance(listed.data[0].cortex, CortexModelInfo)


def test_created_is_the_load_time_else_when_the_catalogue_was_read() -> None:
    catalogue = CatalogueView([entry("a", 1), entry("b", 1)], read_at=1_750_000_000.7)
    view = fleet(node("n1", model("a", 1, age_s=60.0)))
    listed = {c.id: c.created for c in catalogue.model_cards(view, {"up": ["c"]})}
    [copy] = view.nodes[0].models
    assert copy.loaded_at is not None
    assert listed == {"a": int(copy.loaded_at), "b": 1_750_000_000, "c": 1_750_000_000}


@pytest.mark.parametrize(
    ("context", "max_output", "expected"),
    [
        pytest.param(32768, 0, (32768, 4096), id="a-quarter-capped-at-4096"),
        pytest.param(2048, 0, (2048, 512), id="a-quarter-of-a-small-window"),
        pytest.param(8192, 1000, (8192, 1000), id="the-entry's-max_output_tokens"),
        pytest.param(1024, 5000, (1024, 1024), id="never-more-than-the-window"),
        pytest.param(0, 0, None, id="unknown-window-stays-null"),
    ],
)
def test_cards_carry_the_window_in_the_fields_clients_read(
    context: int, max_output: int, expected: tuple[int, int] | None
) -> None:
    catalogue = CatalogueView([entry("m", 1, context_length=context, max_output_tokens=max_output)])
    (card,) = catalogue.model_cards(fleet(node("gpu1")), {})
    wire = msgspec.json.decode(msgspec.json.encode(card))
    fields = ("max_model_len", "context_length", "max_context_length", "max_output_tokens")
    if expected is None:
        assert [wire[f] for f in fields] == [None] * 4 and wire["top_provider"] is None
        return
    window, output = expected
    assert [wire[f] for f in fields] == [window, window, window, output]
    assert wire["top_provider"] == {"context_length": window, "max_completion_tokens": output}


def test_a_resident_copy_gives_the_window_an_entry_lacks() -> None:
    view = fleet(node("gpu1", model("qwen3-8b", 8, context_length=8192)))
    card = next(c for c in CATALOGUE.model_cards(view, {}) if c.id == "qwen3-8b")
    assert card.max_model_len == 8192 and card.max_output_tokens == 2048


def test_cards_show_the_sampling_defaults_a_neuron_reports_else_models_toml() -> None:
    configured = SamplingDefaults(temperature=0.2, top_p=0.9)
    catalogue = CatalogueView([entry("smol", 1, sampling=configured), entry("plain", 1)])
    available = {c.id: c.cortex for c in catalogue.model_cards(fleet(node("gpu1")), {})}
    assert available["smol"] is not None and available["smol"].sampling == configured
    assert available["plain"] is not None and available["plain"].sampling is None
    in_use = SamplingDefaults(temperature=0.2, top_p=0.9, top_k=20)
    loaded = msgspec.structs.replace(model("smol", 1), sampling=in_use)
    listed = catalogue.model_cards(fleet(node("gpu1", loaded)), {})
    assert listed[0].cortex is not None and listed[0].cortex.sampling == in_use


TOO_LONG = (
    "This model's maximum context length is 8192 tokens. However, your messages resulted in "
    "9000 tokens. Please reduce the length of the messages."
)


@pytest.mark.parametrize(
    ("models", "hint"),
    [
        pytest.param(
            [entry("small", 1, context_length=8192), entry("big", 9, context_length=32768)],
            " 'small' holds 8192 tokens; a model with a larger window: 'big' (32768 tokens).",
            id="names-the-bigger-model",
        ),
        pytest.param(
            [entry("small", 1, context_length=8192), entry("same", 2, context_length=8192)],
            " 'small' holds 8192 tokens and no model here holds more: shorten the conversation "
            "or send fewer tools (docs/clients.md, fitting a small context).",
            id="none-bigger",
        ),
    ],
)
def test_a_prompt_too_long_is_told_where_it_fits(models: list[object], hint: str) -> None:
    assert CatalogueView(models).too_long_hint("small", TOO_LONG) == hint  # type: ignore[arg-type]


def test_other_errors_get_no_hint() -> None:
    assert CATALOGUE.too_long_hint("qwen3-8b", "something else went wrong") == ""


def test_the_catalogue_answers_from_one_view_rebuilt_only_after_a_write(tmp_path: Path) -> None:
    live = Live.of(CortexConfig(), [entry("a", 1, pinned=True), entry("b", 1)])
    catalogue = Catalogue(live, PinStore(tmp_path / "state.json"))
    first = catalogue.view()
    assert catalogue.view() is first, "no write, no rebuild"
    catalogue.set_pin("a", False)  # a runtime unpin wins over models.toml's pin
    catalogue.set_ttl("b", 60.0)
    catalogue.set_ttl("b", 60.0)
    after = catalogue.view()
    assert after is not first and catalogue.view() is after, "a repeated TTL rebuilds nothing"
    assert [(m.id, m.pinned, m.ttl_s) for m in after.models] == [
        ("a", False, None),
        ("b", False, 60.0),
    ]
    live.settings = Settings(CortexConfig(), (entry("a", 1, pinned=True), entry("c", 1)))
    assert catalogue.view() is not after, "a reload's new settings are seen at once"
    assert not catalogue.pinned("a") and catalogue.get("b") is None
    # The runtime pin is read back on the next start; the client TTL is not saved
    restarted = Catalogue(live, PinStore(tmp_path / "state.json"))
    assert not restarted.pinned("a")
