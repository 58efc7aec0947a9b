"""Prefill order: short prefills ride ahead of a long one within half the budget."""

from __future__ import annotations

import pytest
from cortex_transformers.admission import prefill_order


@pytest.mark.parametrize(
    ("remaining", "budget", "order", "express"),
    [
        ([], 2048, [], 0),
        ([50_000], 2048, [0], 0),  # alone: it takes the whole budget
        ([50_000, 300], 2048, [1, 0], 1),  # a later agent turn jumps a first turn's prefill
        ([50_000, 300, 40_000, 20], 2048, [1, 3, 0, 2], 2),  # long ones keep arrival order
        ([10, 20, 30], 2048, [0, 1, 2], 3),  # all short: arrival order
        ([50_000, 1023], 2048, [1, 0], 1),  # 1023 + its first token fills the lane exactly
        ([50_000, 1024], 2048, [0, 1], 0),  # half the budget is not express
        ([50_000, 600, 500, 300], 2048, [2, 3, 0, 1], 2),  # smallest first: 300 and 500 fit
        ([950, 100], 2048, [1, 0], 1),  # a long prompt's last chunk does not hold a short one
        ([50_000, 3], 4, [0, 1], 0),  # a lane of 2 tokens holds nothing of 3 + 1
        ([50_000, 1], 6, [1, 0], 1),  # a fully cached prompt computes only its last token
    ],
)
def test_short_prefills_go_first_within_half_the_budget(
    remaining: list[int], budget: int, order: list[int], express: int
) -> None:
    assert prefill_order(remaining, budget) == (order, express)


def test_a_stream_of_short_arrivals_leaves_the_long_prefill_half_the_budget() -> None:
    remaining = [50_000, *[100] * 40]
    order, express = prefill_order(remaining, 2048)
    taken = sum(remaining[i] + 1 for i in order[:express])
    assert taken <= 1024 and order[express] == 0
