"""Prefill order: when the waiting prefills do not fit one iteration, shorter ones than the
head of the queue form an express lane, smallest first; otherwise arrival order stands."""

from __future__ import annotations

import pytest
from cortex_transformers.admission import prefill_order


@pytest.mark.parametrize(
    ("remaining", "budget", "order", "express"),
    [
        ([], 2048, [], 0),
        ([50_000], 2048, [0], 0),  # alone: it takes the whole budget
        ([50_000, 300], 2048, [1, 0], 1),  # a later agent turn goes beside a first turn
        ([50_000, 300, 40_000, 20], 2048, [3, 1, 2, 0], 3),  # shorter than the head: smallest
        ([50_000, 60_000, 300], 2048, [2, 0, 1], 1),  # longer than the head: arrival order
        ([532, 83], 2048, [0, 1], 0),  # both fit: arrival order, one iteration, shared passes
        ([10, 20, 30], 32, [0, 1, 2], 0),  # shorter ones than the head: none
        ([30, 20, 10], 32, [2, 1, 0], 2),  # do not fit: the shortest first
        ([2000, 1000], 2048, [1, 0], 1),  # 3002 tokens: the 1000 goes beside, in half the budget
        ([2000, 2000], 2048, [0, 1], 0),  # equals: arrival order, one finishes first
    ],
)
def test_shorter_prefills_than_the_head_go_first_when_all_do_not_fit(
    remaining: list[int], budget: int, order: list[int], express: int
) -> None:
    assert prefill_order(remaining, budget) == (order, express)
