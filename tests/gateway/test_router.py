"""Routing and placement decisions, and the fleet snapshot they read."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cortex.config import ModelEntry
from cortex.gateway.evictor import Strategy
from cortex.gateway.router import (
    RETRY_NODE_DOWN_S,
    Decision,
    Impossible,
    Load,
    Route,
    Wait,
    choose,
)
from cortex.gateway.snapshot import FleetView, Usage, fleet_from_statuses
from cortex.protocol.neuron import DeviceStatus, ModelState, ModelStatus, NeuronStatus
from tests.gateway.fleets import MIN_RESIDENT_S, NOW, entry, fleet, gb, model, node

QWEN = entry("qwen", 8)


def decide(view: FleetView, wanted: ModelEntry = QWEN, strategy: Strategy = "lru") -> Decision:
    return choose(view, wanted, NOW, strategy, MIN_RESIDENT_S)


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        pytest.param(
            fleet(node("a", model("qwen", 8, in_flight=3)), node("b", model("qwen", 8, queued=1))),
            Route("b"),
            id="fewest-in-flight-plus-queued",
        ),
        pytest.param(
            fleet(node("b", model("qwen", 8)), node("a", model("qwen", 8))),
            Route("a"),
            id="ties-break-by-node-name",
        ),
        pytest.param(
            fleet(node("a", model("qwen", 8), in_flight=5), node("b", model("qwen", 8))),
            Route("b"),
            id="ties-on-the-model-break-by-node-load",
        ),
        pytest.param(
            fleet(
                node("a", model("qwen", 8, in_flight=9)),
                node("b", model("qwen", 8), health="suspect"),
            ),
            Route("a"),
            id="up-node-before-suspect-node",
        ),
        pytest.param(
            fleet(node("a"), node("b", model("qwen", 8), health="suspect")),
            Route("b"),
            id="suspect-node-when-no-up-copy",
        ),
        pytest.param(
            fleet(node("a", model("qwen", 8, state="loading")), node("b", model("qwen", 8))),
            Route("b"),
            id="loaded-copy-before-waiting-for-a-load",
        ),
        pytest.param(
            fleet(node("a"), node("b", model("qwen", 8, state="loading", age_s=None))),
            Wait("b"),
            id="loading-copy-is-waited-for",
        ),
    ],
)
def test_route_to_loaded_copy(view: FleetView, expected: Decision) -> None:
    assert decide(view) == expected


# --------------------------------------------------------------------------- session affinity

SESSIONS = [f"session-{i}" for i in range(40)]


def routed(view: FleetView, session: str) -> str:
    decision = choose(view, QWEN, NOW, "lru", MIN_RESIDENT_S, session)
    assert isinstance(decision, Route)
    return decision.node


def three_copies(**loads: tuple[int, int]) -> FleetView:
    """Nodes a, b, c each holding qwen; ``loads``: node -> (in_flight, queued)."""
    return fleet(
        *(
            node(
                n,
                model("qwen", 8, in_flight=loads.get(n, (0, 0))[0], queued=loads.get(n, (0, 0))[1]),
            )
            for n in "abc"
        )
    )


def test_a_session_stays_on_its_node_across_turns_and_load_changes() -> None:
    homes = {s: routed(three_copies(), s) for s in SESSIONS}
    for s in SESSIONS:
        # Its node being busier (below the thresholds) does not move it.
        busier = three_copies(**{homes[s]: (30, 30)})
        assert routed(busier, s) == homes[s]


def test_sessions_spread_over_all_copies() -> None:
    homes = [routed(three_copies(), s) for s in SESSIONS]
    assert all(homes.count(n) >= 8 for n in "abc"), homes


def test_losing_a_copy_moves_only_the_sessions_that_lived_there() -> None:
    before = {s: routed(three_copies(), s) for s in SESSIONS}
    two = fleet(node("a", model("qwen", 8)), node("b", model("qwen", 8)), node("c"))
    after = {s: routed(two, s) for s in SESSIONS}
    assert all(after[s] == before[s] for s in SESSIONS if before[s] != "c")


@pytest.mark.parametrize(
    ("home_load", "least_load", "moves"),
    [
        pytest.param((65, 0), (0, 0), True, id="65-more-than-idle"),
        pytest.param((60, 10), (0, 0), True, id="queued-counts-too"),
        pytest.param((64, 0), (0, 0), False, id="exactly-the-absolute-threshold"),
        pytest.param((200, 0), (140, 0), False, id="60-more-is-under-absolute"),
        pytest.param((250, 0), (180, 0), False, id="70-more-but-under-1.5x"),
        pytest.param((300, 0), (180, 0), True, id="120-more-and-over-1.5x"),
    ],
)
def test_affinity_breaks_only_when_much_busier(
    home_load: tuple[int, int], least_load: tuple[int, int], moves: bool
) -> None:
    session = SESSIONS[0]
    home = routed(three_copies(), session)
    others = [n for n in "abc" if n != home]
    loads = {home: home_load, others[0]: least_load, others[1]: (999, 0)}
    expected = others[0] if moves else home
    assert routed(three_copies(**loads), session) == expected


def test_session_does_not_prefer_a_suspect_or_loading_copy() -> None:
    view = fleet(
        node("a", model("qwen", 8)),
        node("b", model("qwen", 8), health="suspect"),
        node("c", model("qwen", 8, state="loading")),
    )
    assert {routed(view, s) for s in SESSIONS} == {"a"}


def test_loaded_copy_outside_allowed_nodes_is_served() -> None:
    view = fleet(node("a"), node("b", model("qwen", 8)))
    assert decide(view, entry("qwen", 8, nodes=("a",))) == Route("b")


@pytest.mark.parametrize("state", ["unloading", "failed"])
def test_unloading_or_failed_copy_is_not_routed(state: ModelState) -> None:
    view = fleet(node("a", model("qwen", 8, state=state, measured_gb=8)))
    assert decide(view) == Load("a", "cuda:0")


# --------------------------------------------------------------------------- placement


@pytest.mark.parametrize(
    ("view", "wanted", "expected"),
    [
        pytest.param(
            fleet(node("a", model("x", 10)), node("b", model("y", 14))),
            QWEN,
            Load("b", "cuda:0"),
            id="best-fit-leaves-least-free",
        ),
        pytest.param(
            fleet(node("a", model("x", 16)), node("b", model("y", 16))),
            QWEN,
            Load("a", "cuda:0"),
            id="equal-fit-breaks-by-node-name",
        ),
        pytest.param(
            fleet(node("a", model("x", 12), gpus=(24, 24))),
            QWEN,
            Load("a", "cuda:0"),
            id="best-fit-across-devices-of-one-node",
        ),
        pytest.param(
            fleet(node("a", gpus=(24,), cpu_gb=9)),
            QWEN,
            Load("a", "cuda:0"),
            id="gpu-before-a-tighter-cpu",
        ),
        pytest.param(
            fleet(node("a", gpus=(), cpu_gb=64)),
            QWEN,
            Load("a", "cpu"),
            id="cpu-when-there-is-no-gpu",
        ),
        pytest.param(
            fleet(node("a"), node("b", model("x", 10))),
            entry("qwen", 8, nodes=("a",)),
            Load("a", "cuda:0"),
            id="only-allowed-nodes",
        ),
        pytest.param(
            fleet(node("a", health="suspect"), node("b", model("x", 10))),
            QWEN,
            Load("b", "cuda:0"),
            id="never-on-a-suspect-node",
        ),
        pytest.param(
            fleet(node("a", model("x", 20)), node("b", model("y", 4))),
            entry("tiny"),
            Load("b", "cuda:0"),
            id="unknown-size-goes-where-most-is-free",
        ),
        pytest.param(
            fleet(node("a", foreign_gb=18)),
            QWEN,
            Impossible("qwen needs 8.0 GB; the largest device (a:cuda:0) has 6.0 GB"),
            id="foreign-memory-is-never-free",
        ),
    ],
)
def test_load_where_it_fits(view: FleetView, wanted: ModelEntry, expected: Decision) -> None:
    assert decide(view, wanted) == expected


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        pytest.param(
            fleet(node("a", model("x", 20, idle_s=10)), node("b", model("y", 22, idle_s=999))),
            Load("a", "cuda:0", (("a", "x"),)),
            id="evict-fewest-bytes-not-least-recent",
        ),
        pytest.param(
            fleet(
                node("a", model("x1", 6), model("x2", 6), model("p", 8, pinned=True), gpus=(20,)),
                node("b", model("y", 12), model("p", 8, pinned=True), gpus=(20,)),
            ),
            Load("b", "cuda:0", (("b", "y"),)),
            id="equal-bytes-fewest-models",
        ),
        pytest.param(
            fleet(node("b", model("y", 20)), node("a", model("x", 20))),
            Load("a", "cuda:0", (("a", "x"),)),
            id="equal-cost-breaks-by-node-name",
        ),
        pytest.param(
            fleet(node("a", model("x", 20, pinned=True)), node("b", model("y", 20))),
            Load("b", "cuda:0", (("b", "y"),)),
            id="skips-nodes-whose-models-are-protected",
        ),
    ],
)
def test_load_with_evictions_where_cheapest(view: FleetView, expected: Decision) -> None:
    assert decide(view) == expected


def test_priority_strategy_reaches_the_router() -> None:
    view = fleet(node("a", model("hi", 10, priority=9, idle_s=999), model("lo", 10, priority=1)))
    assert decide(view, strategy="priority") == Load("a", "cuda:0", (("a", "lo"),))
    assert decide(view, strategy="lru") == Load("a", "cuda:0", (("a", "hi"),))


def test_unknown_size_with_no_free_memory_evicts_one() -> None:
    view = fleet(node("a", model("x", 12, idle_s=999), model("y", 12)))
    assert decide(view, entry("tiny")) == Load("a", "cuda:0", (("a", "x"),))


# --------------------------------------------------------------------------- impossible


@pytest.mark.parametrize(
    ("view", "wanted", "reason"),
    [
        pytest.param(
            fleet(node("beast", gpus=(16, 12)), node("small", gpus=(8,))),
            entry("qwen3-32b", 20),
            "qwen3-32b needs 20.0 GB; the largest device (beast:cuda:0) has 16.0 GB",
            id="names-the-largest-device",
        ),
        pytest.param(
            fleet(node("a", health="down"), node("b", health="suspect"), node("c")),
            entry("qwen3-32b", 20, nodes=("a", "b")),
            "no live neuron may serve qwen3-32b (allowed: a, b; up: c)",
            id="no-allowed-node-is-up",
        ),
        pytest.param(
            fleet(node("a", health="down")),
            entry("qwen3-32b", 20),
            "no live neuron may serve qwen3-32b (allowed: any; up: none)",
            id="every-node-down",
        ),
        pytest.param(
            fleet(node("beast", model("p", 10, pinned=True), model("b", 10, in_flight=1))),
            entry("qwen", 8),
            "qwen needs 8.0 GB; every candidate model on beast:cuda:0 is pinned, busy, "
            "loading or loaded too recently to evict",
            id="every-candidate-pinned-or-busy",
        ),
        pytest.param(
            fleet(node("a", gpus=())),
            entry("qwen", 8),
            "qwen needs 8.0 GB; no allowed live neuron reports a device",
            id="node-without-devices",
        ),
        pytest.param(
            fleet(node("a", model("p", 24, pinned=True))),
            entry("tiny"),
            "tiny (vram_gb unset); every candidate model on a:cuda:0 is pinned, busy, "
            "loading or loaded too recently to evict",
            id="unknown-size-says-so",
        ),
    ],
)
def test_impossible_names_the_largest_device(
    view: FleetView, wanted: ModelEntry, reason: str
) -> None:
    decision = decide(view, wanted)
    assert isinstance(decision, Impossible)
    assert decision.reason == reason


def test_no_live_node_asks_to_retry_soon() -> None:
    decision = decide(fleet(node("a", health="down")), entry("m", 8))
    assert decision == Impossible(
        "no live neuron may serve m (allowed: any; up: none)", retry_after_s=RETRY_NODE_DOWN_S
    )


def test_nodes_naming_no_configured_neuron_is_never_servable() -> None:
    decision = decide(fleet(node("a")), entry("m", 8, nodes=("gpu9",)))
    assert decision == Impossible(
        "m may run only on gpu9, and no such neuron is configured (neurons: a); "
        "fix nodes in models.toml",
        retry_after_s=None,
    )


# --------------------------------------------------------------------------- the snapshot


def gpu(total_gb: float, free_gb: float, index: int = 0) -> DeviceStatus:
    return DeviceStatus(
        id=f"cuda:{index}",
        kind="cuda",
        index=index,
        name="H100",
        total_bytes=gb(total_gb),
        free_bytes=gb(free_gb),
        used_bytes=gb(total_gb - free_gb),
    )


def reported(model_id: str, measured_gb: float, **fields: Any) -> ModelStatus:
    loaded = ModelStatus(
        id=model_id,
        state="loaded",
        harness="transformers",
        device="cuda:0",
        source=f"/models/{model_id}",
        quantization="none",
        bytes=gb(measured_gb),
        loaded_at=NOW - 3600,
    )
    return msgspec.structs.replace(loaded, **fields)


def status(name: str, *models: ModelStatus, devices: list[DeviceStatus]) -> NeuronStatus:
    return NeuronStatus(
        name=name, version="0", harnesses=["transformers"], devices=devices, models=list(models)
    )


CATALOGUE = {"big": entry("big", 20), "qwen": QWEN, "pin": entry("pin", 4, pinned=True)}


def test_declared_vram_counts_over_measured_bytes() -> None:
    # The tiny test model measured 1 GB but is declared 20: 8 GB more do not fit on 24.
    view = fleet_from_statuses(
        {"a": status("a", reported("big", 1), devices=[gpu(24, 23)])}, CATALOGUE, {}
    )
    a = view.nodes[0]
    assert a.free_bytes(a.devices[0]) == gb(4)
    assert decide(view) == Load("a", "cuda:0", (("a", "big"),))


@pytest.mark.parametrize(
    ("state", "occupancy_gb"),
    [
        pytest.param("loaded", 20, id="loaded-holds-its-declaration"),
        pytest.param("loading", 20, id="loading-holds-its-declaration"),
        pytest.param("unloading", 1, id="unloading-holds-what-it-measured"),
        pytest.param("failed", 1, id="failed-holds-what-it-measured"),
    ],
)
def test_occupancy_by_state(state: ModelState, occupancy_gb: float) -> None:
    view = fleet_from_statuses(
        {"a": status("a", reported("big", 1, state=state), devices=[gpu(24, 23)])}, CATALOGUE, {}
    )
    assert view.nodes[0].models[0].occupancy == gb(occupancy_gb)


def test_measured_bytes_beyond_declaration_count() -> None:
    view = fleet_from_statuses(
        {"a": status("a", reported("qwen", 11), devices=[gpu(24, 13)])}, CATALOGUE, {}
    )
    assert view.nodes[0].models[0].occupancy == gb(11)


@pytest.mark.parametrize(
    ("free_gb", "foreign_gb"),
    [
        pytest.param(13, 10, id="memory-used-by-others-is-foreign"),
        pytest.param(24, 0, id="reported-use-below-measured-clamps-to-zero"),
    ],
)
def test_foreign_memory(free_gb: float, foreign_gb: float) -> None:
    view = fleet_from_statuses(
        {"a": status("a", reported("x", 1), devices=[gpu(24, free_gb)])}, CATALOGUE, {}
    )
    assert view.nodes[0].devices[0].foreign_bytes == gb(foreign_gb)


def test_health_from_statuses() -> None:
    devices = [gpu(24, 24)]
    view = fleet_from_statuses(
        {"c": status("c", devices=devices), "a": None, "b": status("b", devices=devices)},
        CATALOGUE,
        {},
        suspect={"b"},
    )
    assert [(n.name, n.health) for n in view.nodes] == [
        ("a", "down"),
        ("b", "suspect"),
        ("c", "up"),
    ]


def test_gateway_usage_merges_with_the_neuron_report() -> None:
    usage = {
        ("qwen", "a"): Usage(last_used=NOW - 5, in_flight=4, queued=0),
        ("qwen", "b"): Usage(last_used=NOW, in_flight=99),  # another node: ignored
    }
    neuron = reported("qwen", 8, last_used=NOW - 50, in_flight=1, queued=2)
    view = fleet_from_statuses({"a": status("a", neuron, devices=[gpu(24, 16)])}, CATALOGUE, usage)
    copy = view.nodes[0].models[0]
    assert (copy.last_used, copy.in_flight, copy.queued) == (NOW - 5, 4, 2)


def test_pending_load_reserves_its_declaration_until_reported() -> None:
    usage = {("big", "a"): Usage(loading_on="cuda:0")}
    view = fleet_from_statuses({"a": status("a", devices=[gpu(24, 24)])}, CATALOGUE, usage)
    assert decide(view, CATALOGUE["big"]) == Wait("a")
    assert decide(view, entry("other", 8)) == Impossible(
        "other needs 8.0 GB; every candidate model on a:cuda:0 is pinned, busy, loading "
        "or loaded too recently to evict"
    )
    reported_too = {"a": status("a", reported("big", 3, state="loading"), devices=[gpu(24, 21)])}
    assert len(fleet_from_statuses(reported_too, CATALOGUE, usage).nodes[0].models) == 1


def test_catalogue_facts_reach_the_snapshot() -> None:
    models = [reported("pin", 4), reported("qwen", 8), reported("stray", 2, context_length=77)]
    view = fleet_from_statuses({"a": status("a", *models, devices=[gpu(24, 10)])}, CATALOGUE, {})
    facts = {
        m.model_id: (m.pinned, m.declared_bytes, m.context_length) for m in view.nodes[0].models
    }
    assert facts == {"pin": (True, gb(4), 0), "qwen": (False, gb(8), 0), "stray": (False, 0, 77)}
