"""Eviction plans on one device: who may go, in what order, and how few."""

from __future__ import annotations

import pytest

from cortex.gateway.evictor import Strategy, plan_eviction
from cortex.gateway.snapshot import Resident
from tests.gateway.fleets import MIN_RESIDENT_S, NOW, gb, model, node


def plan(
    *models: Resident, need_gb: float, strategy: Strategy = "lru", gpu_gb: float = 24.0
) -> list[str] | None:
    n = node("a", *models, gpus=(gpu_gb,))
    return plan_eviction(n, n.devices[0], gb(need_gb), NOW, strategy, MIN_RESIDENT_S)


@pytest.mark.parametrize(
    "protected",
    [
        pytest.param(model("x", 12, pinned=True), id="pinned"),
        pytest.param(model("x", 12, in_flight=1), id="in-flight"),
        pytest.param(model("x", 12, queued=2), id="queued"),
        pytest.param(model("x", 12, age_s=MIN_RESIDENT_S - 1), id="fresh"),
        pytest.param(model("x", 12, state="loading", age_s=None), id="loading"),
        pytest.param(model("x", 12, state="unloading", measured_gb=12), id="unloading"),
    ],
)
def test_protected_model_is_never_evicted(protected: Resident) -> None:
    assert plan(protected, model("y", 12), need_gb=20) is None
    assert plan(protected, model("y", 12), need_gb=12) == ["y"]


def test_pinned_model_is_never_evicted() -> None:
    assert plan(model("old", 20, idle_s=9999, pinned=True), model("new", 2), need_gb=4) == ["new"]


@pytest.mark.parametrize(
    ("in_flight", "queued"),
    [pytest.param(1, 0, id="running"), pytest.param(0, 1, id="queued")],
)
def test_model_with_requests_in_flight_is_not_evicted(in_flight: int, queued: int) -> None:
    busy = model("busy", 12, idle_s=9999, in_flight=in_flight, queued=queued)
    assert plan(busy, model("idle", 12, idle_s=1), need_gb=12) == ["idle"]


@pytest.mark.parametrize(
    ("age_s", "evictable"),
    [
        pytest.param(MIN_RESIDENT_S - 0.5, False, id="younger-than-min-is-kept"),
        pytest.param(MIN_RESIDENT_S, True, id="exactly-min-is-evictable"),
        pytest.param(MIN_RESIDENT_S + 1, True, id="older-is-evictable"),
        pytest.param(None, True, id="unknown-load-time-counts-as-old"),
    ],
)
def test_min_resident_time_protects_fresh_loads(age_s: float | None, evictable: bool) -> None:
    result = plan(model("x", 24, age_s=age_s, idle_s=None), need_gb=1)
    assert result == (["x"] if evictable else None)


@pytest.mark.parametrize(
    ("models", "need_gb", "expected"),
    [
        pytest.param(
            [model("a", 8, idle_s=10), model("b", 8, idle_s=300), model("c", 8, idle_s=60)],
            8,
            ["b"],
            id="least-recently-used-goes-first",
        ),
        pytest.param(
            [model("a", 8, idle_s=10), model("b", 8, idle_s=300), model("c", 8, idle_s=60)],
            16,
            ["b", "c"],
            id="then-the-next-least-recent",
        ),
        pytest.param(
            [model("a", 8, idle_s=None, age_s=5000), model("b", 8, idle_s=4000)],
            10,
            ["a"],
            id="never-used-ranks-by-load-time",
        ),
        pytest.param(
            [model("b", 8, idle_s=60), model("a", 8, idle_s=60)],
            10,
            ["a"],
            id="ties-break-by-id",
        ),
        pytest.param(
            [model("small", 2, idle_s=900), model("big", 20, idle_s=10)],
            20,
            ["small", "big"],
            id="a-prefix-of-the-order-not-the-tightest-subset",
        ),
    ],
)
def test_lru_evicts_least_recently_used_first(
    models: list[Resident], need_gb: float, expected: list[str]
) -> None:
    assert plan(*models, need_gb=need_gb) == expected


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        pytest.param(
            [model("hi", 8, priority=5, idle_s=900), model("lo", 8, priority=1, idle_s=1)],
            ["lo"],
            id="lowest-priority-even-if-recently-used",
        ),
        pytest.param(
            [model("a", 8, priority=1, idle_s=10), model("b", 8, priority=1, idle_s=500)],
            ["b"],
            id="lru-among-equal-priority",
        ),
        pytest.param(
            [model("neg", 8, priority=-1, idle_s=1), model("zero", 8, idle_s=900)],
            ["neg"],
            id="negative-priority-below-default",
        ),
    ],
)
def test_priority_evicts_lowest_priority_then_lru(
    models: list[Resident], expected: list[str]
) -> None:
    assert plan(*models, need_gb=10, strategy="priority") == expected


@pytest.mark.parametrize(
    ("need_gb", "expected"),
    [
        pytest.param(4, [], id="fits-already-evicts-nothing"),
        pytest.param(8, ["a"], id="evicts-only-as-many-as-needed"),
        pytest.param(20, ["a", "b"], id="evicts-several-when-needed"),
        pytest.param(21, None, id="impossible-even-after-evicting-all"),
    ],
)
def test_plan_is_minimal_prefix(need_gb: float, expected: list[str] | None) -> None:
    models = [model("a", 8, idle_s=900), model("b", 8, idle_s=10), model("p", 4, pinned=True)]
    assert plan(*models, need_gb=need_gb) == expected


def test_declared_vram_counts_over_measured_bytes() -> None:
    # measured 1 GB, declared 20: evicting it frees the 20 its declaration reserved
    assert plan(model("x", 20, measured_gb=1), need_gb=20) == ["x"]
    assert plan(model("x", 20, measured_gb=1), need_gb=5) == ["x"]


def test_models_on_another_device_do_not_count() -> None:
    n = node("a", model("x", 20, device="cuda:1"), model("y", 20), gpus=(24, 24))
    result = plan_eviction(n, n.devices[0], gb(10), NOW, "lru", MIN_RESIDENT_S)
    assert result == ["y"]
