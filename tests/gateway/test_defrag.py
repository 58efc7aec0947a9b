"""Defrag plans: move idle models between nodes so that a wanted model fits somewhere."""

from __future__ import annotations

import pytest

from cortex.config import ModelEntry
from cortex.gateway.defrag import Move, plan_defrag
from cortex.gateway.snapshot import FleetView
from tests.gateway.fleets import MIN_RESIDENT_S, NOW, entry, fleet, model, node

BIG = entry("big", 20)


def defrag(view: FleetView, *wanted: ModelEntry) -> list[Move]:
    return plan_defrag(view, list(wanted or [BIG]), NOW, MIN_RESIDENT_S)


# Two 24 GB nodes, 12 GB used on each: 24 GB free in all, but never 20 in one place.
SCATTERED = fleet(node("a", model("x", 12)), node("b", model("y", 12)))


@pytest.mark.parametrize(
    ("view", "wanted", "expected"),
    [
        pytest.param(SCATTERED, [BIG], [Move("x", "a", "b", "cuda:0")], id="one-move-consolidates"),
        pytest.param(
            fleet(node("a", model("x1", 5), model("x2", 5)), node("b", model("y", 14))),
            [BIG],
            [Move("y", "b", "a", "cuda:0")],
            id="fewest-moves-over-fewest-bytes",
        ),
        pytest.param(
            fleet(node("a", model("x", 12)), node("b", model("y", 8)), node("c", model("z", 14))),
            [BIG],
            [Move("y", "b", "c", "cuda:0")],
            id="equal-moves-fewest-bytes",
        ),
        pytest.param(
            fleet(
                node("a", model("x1", 8), model("x2", 8)),
                node("b", model("p", 16, pinned=True)),
                node("c", model("q", 16, pinned=True)),
            ),
            [BIG],
            [Move("x1", "a", "b", "cuda:0"), Move("x2", "a", "c", "cuda:0")],
            id="several-moves-when-one-is-not-enough",
        ),
        pytest.param(
            fleet(node("a", model("x", 12)), node("b", model("y", 14)), node("c", model("z", 6))),
            [BIG],
            [Move("z", "c", "b", "cuda:0")],
            id="cheapest-move-goes-to-the-best-fit",
        ),
        pytest.param(
            SCATTERED,
            [entry("big", 20, nodes=("b",))],
            [Move("y", "b", "a", "cuda:0")],
            id="target-only-on-the-wanted-models-nodes",
        ),
        pytest.param(
            fleet(
                node("a", model("x", 12, nodes=("a", "c"))),
                node("b", model("y", 12)),
                node("c", model("z", 12)),
            ),
            [BIG],
            [Move("x", "a", "c", "cuda:0")],
            id="moved-model-only-to-its-own-nodes",
        ),
        pytest.param(
            fleet(
                node("a", model("x", 12)),
                node("b", model("y", 12)),
                node("c", model("w", 12)),
                node("d", model("z", 12)),
            ),
            [BIG, entry("big2", 20)],
            [Move("x", "a", "b", "cuda:0"), Move("w", "c", "d", "cuda:0")],
            id="second-wanted-planned-after-the-first",
        ),
    ],
)
def test_defrag_moves(view: FleetView, wanted: list[ModelEntry], expected: list[Move]) -> None:
    assert defrag(view, *wanted) == expected


@pytest.mark.parametrize(
    ("view", "wanted"),
    [
        pytest.param(fleet(node("a", model("x", 4)), node("b")), BIG, id="already-fits"),
        pytest.param(
            fleet(node("a", model("big", 20, state="loading", age_s=None)), node("b")),
            BIG,
            id="already-loading",
        ),
        pytest.param(SCATTERED, entry("unknown"), id="unknown-size"),
        pytest.param(SCATTERED, entry("huge", 30), id="bigger-than-any-device"),
        pytest.param(
            fleet(node("a", model("x", 12, pinned=True)), node("b", model("y", 12, pinned=True))),
            BIG,
            id="pinned-models-stay",
        ),
        pytest.param(
            fleet(node("a", model("x", 12, in_flight=1)), node("b", model("y", 12, queued=1))),
            BIG,
            id="busy-models-stay",
        ),
        pytest.param(
            fleet(node("a", model("x", 12, age_s=1)), node("b", model("y", 12, age_s=1))),
            BIG,
            id="fresh-loads-stay",
        ),
        pytest.param(
            fleet(node("a", model("x", 12)), node("b", model("y", 16))),
            BIG,
            id="nowhere-to-move-without-evicting",
        ),
        pytest.param(
            fleet(node("a", model("x", 12)), node("b", model("x", 12)), node("c", model("z", 14))),
            BIG,
            id="never-onto-a-node-holding-a-copy",
        ),
        pytest.param(
            fleet(node("a", model("x", 12)), node("b", model("y", 12), health="suspect")),
            BIG,
            id="suspect-node-is-neither-source-nor-destination",
        ),
        pytest.param(
            fleet(node("a", model("x", 12), model("y", 12, device="cuda:1"), gpus=(24, 24))),
            BIG,
            id="never-within-one-node",
        ),
    ],
)
def test_defrag_returns_nothing(view: FleetView, wanted: ModelEntry) -> None:
    assert defrag(view, wanted) == []


def test_defrag_is_deterministic() -> None:
    view = fleet(*(node(n, model(f"m{n}", 12)) for n in "dcba"))
    assert defrag(view) == defrag(view) == [Move("ma", "a", "b", "cuda:0")]
