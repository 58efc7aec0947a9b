"""The scheduling policy alone, on fake sequences and a real block manager, without torch or a
model: admission order, chunking, the express lane, preemption, refusal."""

from __future__ import annotations

import itertools
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from cortex_transformers.block_manager import BlockManager, BlockTable
from cortex_transformers.planner import Joins, Plan, schedule

BS = 4
_ids = itertools.count(1000)


@dataclass(eq=False)
class Fake:
    """A sequence as the planner sees it."""

    name: str
    tokens: list[int]
    computed: int = 0
    table: BlockTable = field(default_factory=BlockTable)


def waiting(name: str, length: int, prefix: list[int] | None = None) -> Fake:
    """A prompt of ``length`` tokens no other fake shares, unless it starts with ``prefix``."""
    head = list(prefix or [])
    return Fake(name, head + [next(_ids) for _ in range(length - len(head))])


def running(blocks: BlockManager, name: str, length: int) -> Fake:
    """A decoding row of ``length`` tokens: all but its last in the pool, as after a step."""
    seq = waiting(name, length)
    blocks.allocate(seq.table, seq.tokens[:-1])
    blocks.register(seq.table, seq.tokens, length - 1)
    seq.computed = length - 1
    return seq


def always(group: list[tuple[Fake, int]], chunk: tuple[Fake, int]) -> bool:
    return True


def never(group: list[tuple[Fake, int]], chunk: tuple[Fake, int]) -> bool:
    return False


def plan_of(
    queue: list[Fake],
    rows: list[Fake],
    blocks: BlockManager,
    budget: int = 64,
    max_batch: int = 8,
    joins: Joins[Fake] = always,
) -> Plan[Fake]:
    return schedule(queue, rows, blocks, budget=budget, max_batch=max_batch, joins=joins)


def passes(lane: list[list[tuple[Fake, int]]]) -> list[list[tuple[str, int]]]:
    return [[(seq.name, count) for seq, count in group] for group in lane]


def names(seqs: list[Fake]) -> list[str]:
    return [seq.name for seq in seqs]


@pytest.mark.parametrize(
    ("lengths", "budget", "joins", "express", "prefill"),
    [
        # Everything fits: arrival order, short prompts share one pass.
        ([5, 9, 3], 64, always, [], [[("a", 5), ("b", 9), ("c", 3)]]),
        # A model that cannot pack runs one pass each.
        ([5, 9], 64, never, [], [[("a", 5)], [("b", 9)]]),
        # Alone, a long prompt takes the whole budget and goes on next iteration.
        ([100], 32, always, [], [[("a", 32)]]),
        # The head is long: a shorter one goes first in half the budget, the head gets the rest
        # (32 - 16 for the lane + what the lane left: 16 - 5 - 1 = 10).
        ([100, 5], 32, always, [[("b", 5)]], [[("a", 26)]]),
        # Shorter ones than the head, smallest first; a longer one keeps arrival order after it.
        (
            [60, 12, 200, 3],
            40,
            always,
            [[("d", 3), ("b", 12)]],
            [[("a", 40 - 20 + 3)]],  # what the lane left: 20 - 4 - 13
        ),
        # Equal prompts: arrival order, one finishes first.
        # Each chunk costs its first decode token too: the second gets 48 - 40 - 1.
        ([40, 40], 48, always, [], [[("a", 40), ("b", 7)]]),
        ([30, 50], 64, always, [], [[("a", 30), ("b", 33)]]),
    ],
)
def test_admission_order_and_chunk_sizes(
    lengths: list[int],
    budget: int,
    joins: Joins[Fake],
    express: list[list[tuple[str, int]]],
    prefill: list[list[tuple[str, int]]],
) -> None:
    blocks = BlockManager(256, BS)
    queue = [waiting("abcdefgh"[i], n) for i, n in enumerate(lengths)]
    plan = plan_of(queue, [], blocks, budget=budget, joins=joins)
    assert passes(plan.express) == express
    assert passes(plan.prefill) == prefill
    chunked = [seq for lane in (plan.express, plan.prefill) for group in lane for seq, _ in group]
    assert names(plan.admitted) == names(chunked)
    # Only the prompts that complete decode (their first token out of this plan's prefill).
    complete = [
        s for lane in (plan.express, plan.prefill) for g in lane for s, c in g if c == len(s.tokens)
    ]
    assert names(plan.decode) == names(complete)
    assert not plan.refused and not plan.preempted


def test_a_chunked_prompt_continues_where_it_stopped_after_the_running_rows_tokens() -> None:
    blocks = BlockManager(64, BS)
    rows = [running(blocks, "r1", 9), running(blocks, "r2", 6)]
    long = waiting("long", 100)
    first = plan_of([long], rows, blocks, budget=34)
    assert passes(first.prefill) == [[("long", 32)]]  # 34 less one token per running row
    assert names(first.decode) == ["r1", "r2"]  # it is not done: it does not decode yet
    long.computed += 32  # what the runner does when the pass ran
    second = plan_of([long], rows, blocks, budget=34)
    assert passes(second.prefill) == [[("long", 32)]]
    assert not second.admitted  # admitted once, its blocks kept between chunks


def test_a_cached_prefix_is_mapped_and_not_computed_again() -> None:
    blocks = BlockManager(64, BS)
    old = running(blocks, "old", 13)  # 12 tokens in the pool: 3 full blocks published
    turn = waiting("turn", 20, prefix=old.tokens[:12])
    plan = plan_of([turn], [], blocks)
    assert turn.computed == 12 and passes(plan.prefill) == [[("turn", 8)]]
    assert turn.table.blocks[:3] == old.table.blocks[:3]


def test_the_express_lane_counts_a_cached_prefix_as_done() -> None:
    """A later agent turn over a cached prefix is short to compute, however long its prompt."""
    blocks = BlockManager(64, BS)
    old = running(blocks, "old", 41)
    first_turn = waiting("first", 120)
    later_turn = waiting("later", 44, prefix=old.tokens[:40])  # 4 tokens to compute
    plan = plan_of([first_turn, later_turn], [], blocks, budget=32)
    assert passes(plan.express) == [[("later", 4)]]
    assert passes(plan.prefill) == [[("first", 32 - 16 + 11)]]


def test_an_express_prompt_that_does_not_fit_yet_keeps_its_place_and_the_head_goes_on() -> None:
    blocks = BlockManager(12, BS)
    head = waiting("head", 30)  # 8 blocks
    blocks.allocate(head.table, head.tokens)  # admitted in an earlier iteration, 8 computed
    head.computed = 8
    short = waiting("short", 20)  # 5 blocks: only 4 are free
    plan = plan_of([head, short], [], blocks, budget=16)
    assert not plan.express and passes(plan.prefill) == [[("head", 16)]]
    assert not plan.refused and not plan.admitted


def test_a_waiting_prompt_that_does_not_fit_waits_for_running_rows() -> None:
    blocks = BlockManager(8, BS)
    row = running(blocks, "row", 17)  # 4 blocks
    later = waiting("later", 13)  # 4 blocks and a spare for the running row: 5 of 4 free
    plan = plan_of([later], [row], blocks)
    assert not plan.prefill and not plan.refused and not later.table.blocks
    assert names(plan.decode) == ["row"]


def test_a_prompt_larger_than_the_pool_is_refused_and_the_next_one_admitted() -> None:
    blocks = BlockManager(4, BS)
    huge, small = waiting("huge", 17), waiting("small", 5)
    plan = plan_of([huge, small], [], blocks)
    assert names(plan.refused) == ["huge"] and passes(plan.prefill) == [[("small", 5)]]


def test_admission_keeps_a_block_spare_for_every_row_about_to_decode() -> None:
    """Two running rows: a prompt is admitted only with two blocks left over."""
    blocks = BlockManager(10, BS)
    rows = [running(blocks, "r1", 5), running(blocks, "r2", 5)]  # 1 block each
    fits, too_many = waiting("fits", 23), waiting("more", 1)  # 6 blocks; then 1 + 3 spare
    plan = plan_of([fits, too_many], rows, blocks)
    assert names(plan.admitted) == ["fits"] and passes(plan.prefill) == [[("fits", 23)]]
    assert names(plan.decode) == ["r1", "r2", "fits"]
    assert blocks.free_blocks == 0  # r1 and r2 each took a fresh block for their next token


def test_a_full_pool_preempts_the_newest_rows_and_they_come_back_from_their_tokens() -> None:
    blocks = BlockManager(6, BS)
    rows = [running(blocks, f"r{i}", 5) for i in range(6)]  # a full block each, each needs one
    assert blocks.free_blocks == 0
    plan = plan_of([], rows, blocks)
    assert names(plan.preempted) == ["r5", "r4", "r3"]  # newest first, one for each survivor
    assert names(plan.decode) == ["r0", "r1", "r2"]
    assert all(len(s.table.blocks) == 2 for s in rows[:3]) and blocks.free_blocks == 0
    assert all(not s.table.blocks and s.computed == 0 for s in plan.preempted)
    for seq in rows[:3]:  # they finish
        blocks.deallocate(seq.table)
    back = plan_of(plan.preempted[::-1], [], blocks)  # requeued at the head, oldest first
    assert names(back.admitted) == ["r3", "r4"]  # r5 next: it would leave no spare block
    assert all(seq.computed + count == 5 for group in back.prefill for seq, count in group)


def test_a_prompt_that_completes_without_room_to_decode_waits_a_step_instead_of_preemption() -> (
    None
):
    """The last spare block went to the running row; the newcomer's first decode token would
    need one more: it joins without decoding, nothing is preempted."""
    blocks = BlockManager(4, BS)
    row = running(blocks, "row", 5)  # 1 block, and a second for its next token
    new = waiting("new", 8)  # 2 blocks, both full: its first decode token needs a third
    plan = plan_of([new], [row], blocks)
    assert passes(plan.prefill) == [[("new", 8)]]
    assert names(plan.decode) == ["row"] and not plan.preempted


def test_prompts_sharing_a_block_being_computed_wait_one_iteration_for_it() -> None:
    """Agent sessions sharing a system prompt arrive together: the first computes the shared
    blocks, the others are admitted next iteration as cache hits; an unrelated one goes now."""
    blocks = BlockManager(64, BS)
    system = [next(_ids) for _ in range(12)]
    a, b, other = waiting("a", 15, system), waiting("b", 14, system), waiting("other", 6)
    plan = plan_of([a, b, other], [], blocks)
    assert passes(plan.prefill) == [[("a", 15), ("other", 6)]]
    assert not b.table.blocks
    blocks.register(a.table, a.tokens, 15)  # the pass ran
    a.computed = 15
    later = plan_of([b], [a, other], blocks)
    assert b.computed == 12 and passes(later.prefill) == [[("b", 2)]]


def test_no_more_rows_than_max_batch() -> None:
    blocks = BlockManager(64, BS)
    rows = [running(blocks, f"r{i}", 3) for i in range(3)]
    queue = [waiting(f"w{i}", 4) for i in range(3)]
    plan = plan_of(queue, rows, blocks, max_batch=4)
    assert names(plan.admitted) == ["w0"] and len(plan.decode) == 4


def test_the_planner_imports_no_torch() -> None:
    code = "import sys, cortex_transformers.planner; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_plan_does_not_touch_the_queues() -> None:
    blocks = BlockManager(6, BS)
    rows = [running(blocks, f"r{i}", 9) for i in range(3)]
    queue = [waiting("w", 3)]
    before = (list(queue), list(rows))
    plan_of(queue, rows, blocks)
    assert (queue, rows) == before
