"""Idle TTL policy (pure): which copies expire, and how long the others have left."""

from __future__ import annotations

import pytest

from cortex.config import ModelEntry
from cortex.gateway.idle import expired, ttl_left, ttl_of
from cortex.gateway.snapshot import NodeView, Resident
from tests.gateway.fleets import NOW, entry, fleet, model, node


def _expired_ids(
    view_nodes: list[NodeView], catalogue: dict[str, ModelEntry], default: float = 0.0
) -> list[tuple[str, str]]:
    return [(c.model_id, c.node) for c in expired(fleet(*view_nodes), catalogue, default, NOW)]


def test_model_ttl_overrides_the_default_and_zero_means_never() -> None:
    assert ttl_of(entry("a", ttl_s=5.0), default_ttl_s=60.0) == 5.0
    assert ttl_of(entry("a"), default_ttl_s=60.0) == 60.0
    assert ttl_of(entry("a", ttl_s=0.0), default_ttl_s=60.0) == 0.0
    assert ttl_of(None, default_ttl_s=60.0) == 0.0  # not in the catalogue: never touched


def test_idle_past_ttl_expires_and_fresh_use_does_not() -> None:
    nodes = [node("n1", model("old", idle_s=30.0), model("fresh", idle_s=2.0))]
    catalogue = {"old": entry("old", ttl_s=10.0), "fresh": entry("fresh", ttl_s=10.0)}
    assert _expired_ids(nodes, catalogue) == [("old", "n1")]


def test_never_used_model_counts_idle_from_its_load() -> None:
    nodes = [node("n1", model("m", idle_s=None, age_s=20.0))]
    assert _expired_ids(nodes, {"m": entry("m", ttl_s=10.0)}) == [("m", "n1")]


@pytest.mark.parametrize(
    "copy",
    [
        model("m", idle_s=99.0, pinned=True),
        model("m", idle_s=99.0, in_flight=1),
        model("m", idle_s=99.0, queued=1),
        model("m", idle_s=99.0, state="loading"),
    ],
    ids=["pinned", "in-flight", "queued", "loading"],
)
def test_pinned_busy_or_loading_copies_never_expire(copy: Resident) -> None:
    nodes = [node("n1", copy)]
    assert _expired_ids(nodes, {"m": entry("m", ttl_s=1.0)}) == []


def test_suspect_and_down_nodes_are_left_for_a_fresh_poll() -> None:
    nodes = [
        node("n1", model("m", idle_s=99.0), health="suspect"),
        node("n2", model("m", idle_s=99.0)),
    ]
    assert _expired_ids(nodes, {"m": entry("m", ttl_s=1.0)}) == [("m", "n2")]


def test_default_ttl_applies_to_entries_without_their_own() -> None:
    nodes = [node("n1", model("m", idle_s=99.0))]
    assert _expired_ids(nodes, {"m": entry("m")}, default=0.0) == []
    assert _expired_ids(nodes, {"m": entry("m")}, default=60.0) == [("m", "n1")]


def test_ttl_left_counts_down_and_is_absent_without_a_ttl() -> None:
    copy = node("n1", model("m", idle_s=3.0)).models[0]
    assert ttl_left(copy, 10.0, NOW) == pytest.approx(7.0)
    assert ttl_left(copy, 0.0, NOW) is None
