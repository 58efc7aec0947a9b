"""The scheduling policy: what one iteration of the decode worker does, decided before it runs.

``schedule`` reads the waiting queue, the running rows and the block manager, and returns a
``Plan``: which sequences prefill and in which forward passes (with how many tokens each), which
running rows decode, which are preempted and which prompts are refused. The worker
(scheduler.py) runs the plan; nothing here touches torch, a model or a thread, so the policy is
tested with fake sequences (tests/harness_transformers/test_planner.py), as nano-vllm's and
vLLM's schedulers plan a step that their model runners then execute.

Its one side effect is the block bookkeeping the plan implies, as vLLM's ``schedule`` allocates
KV blocks: an admitted sequence gets its blocks (its cached prefix mapped, ``computed`` set to
it), every decoding row gets room for its next token, a preempted row gives its blocks back
(they stay in the prefix cache) and keeps its tokens for recompute.

The policy, under one budget of ``budget`` tokens an iteration:

1. prefill gets what the budget leaves after one token per running row (at least one);
2. waiting sequences are looked at in queue order, at most as many as could join the batch.
   When their prefills do not all fit the budget, those with less left to compute than the head
   of the queue go first in an express lane (admission.py); an express sequence that does not
   fit the pool yet is skipped, the others keep arrival order;
3. a sequence is admitted once the pool holds its prompt with a block spare per row about to
   decode (its cached prefix counted as held). One that does not fit waits for running rows to
   free blocks, or is refused when no row could (its prompt is larger than the pool);
4. its chunk is what the budget leaves, its prompt continuing next iteration when that is less
   than the rest; chunks share a forward pass while ``joins`` says so. A sequence whose prompt
   starts with a block that a chunk planned in this iteration is computing waits one iteration
   and then finds that block cached, instead of computing it twice (agent sessions sharing a
   system prompt arrive together);
5. every running row gets room for its next token, oldest first; when the pool is full the
   newest rows are preempted. Then the rows whose prompt completes in this plan get theirs; one
   that finds no room starts decoding next iteration, so a prefill is never wasted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from cortex_transformers.admission import express_budget, prefill_order
from cortex_transformers.block_manager import BlockManager, BlockTable


class Seq(Protocol):
    """What the planner reads of a sequence (generation.py's ``Generation``, or a test fake)."""

    tokens: list[int]  # the prompt, then every sampled token
    computed: int  # leading tokens whose KV is in the pool
    table: BlockTable  # its blocks; empty while it waits for admission or after preemption


S = TypeVar("S", bound=Seq)

Joins = Callable[[list[tuple[S, int]], tuple[S, int]], bool]
"""Whether a chunk (a sequence and its token count) may share a forward pass with a group of
chunks (runner.py's ``ModelRunner.joins``)."""


@dataclass
class Plan(Generic[S]):
    """One iteration, in the order the worker runs it."""

    refused: list[S] = field(default_factory=list)  # prompts larger than the pool: they fail
    preempted: list[S] = field(default_factory=list)  # newest first: back to the queue's head
    admitted: list[S] = field(default_factory=list)  # given blocks now, cached prefix mapped
    # Forward passes of (sequence, tokens to prefill); the express lane's first tokens go out
    # before the other passes run.
    express: list[list[tuple[S, int]]] = field(default_factory=list)
    prefill: list[list[tuple[S, int]]] = field(default_factory=list)
    # Rows with room for their next token, oldest first: the running rows left, then those whose
    # prompt completes in this plan (each decodes if its first token does not end it).
    decode: list[S] = field(default_factory=list)


def schedule(
    waiting: Iterable[S],
    running: list[S],
    blocks: BlockManager,
    *,
    budget: int,
    max_batch: int,
    joins: Joins[S],
) -> Plan[S]:
    """Plan one iteration: ``waiting`` in queue order, ``running`` oldest first, ``budget`` the
    tokens an iteration may compute, ``max_batch`` the most rows that decode together. Neither
    list is changed; ``blocks`` and the sequences' tables are (see the module's note)."""
    plan: Plan[S] = Plan()
    tokens = max(budget - len(running), 1)
    order, express = _prefill_order(waiting, blocks, tokens, max_batch - len(running))
    prefill = _Prefill(plan, blocks, joins, rows=len(running), max_batch=max_batch)
    if express:
        lane = express_budget(tokens)
        left = prefill.fill(order[:express], lane, plan.express, express=True)
        prefill.fill(order[express:], tokens - lane + left, plan.prefill, express=False)
    else:
        prefill.fill(order, tokens, plan.prefill, express=False)
    _reserve(plan, running, prefill.joining, blocks)
    return plan


class _Prefill(Generic[S]):
    """Admission and chunking across the express lane and the rest of one plan."""

    def __init__(
        self, plan: Plan[S], blocks: BlockManager, joins: Joins[S], *, rows: int, max_batch: int
    ) -> None:
        self._plan = plan
        self._blocks = blocks
        self._joins = joins
        self._max_batch = max_batch
        self._rows = rows  # rows about to decode: running ones and prompts completing here
        self._planned: list[tuple[S, int]] = []  # every chunk of passes closed so far
        self.joining: list[S] = []  # sequences whose prompt completes in this plan

    def fill(
        self, order: list[S], budget: int, passes: list[list[tuple[S, int]]], *, express: bool
    ) -> int:
        """Plan ``order``'s chunks within ``budget`` into ``passes``; returns the budget left.
        An ``express`` sequence that does not fit the pool yet is skipped (the long prefill
        behind it goes on); any other stops the queue until rows free blocks."""
        group: list[tuple[S, int]] = []
        for seq in order:
            if budget <= 0 or self._rows + len(group) >= self._max_batch:
                break
            if _needs_a_chunk_of(seq, [*self._planned, *group], self._blocks.block_size):
                continue  # it keeps its place and finds those blocks cached next iteration
            spare = self._rows + len(group)
            if not seq.table.blocks and not self._admit(seq, spare):
                if express:
                    continue  # it keeps its place in the queue
                if spare:
                    break  # wait for running rows to free blocks
                self._plan.refused.append(seq)
                continue
            count = min(budget, len(seq.tokens) - seq.computed)
            if group and not self._joins(group, (seq, count)):
                self._close(group, passes)
                group = []
            group.append((seq, count))
            budget -= count + 1  # its chunk, and its first decode token
            if seq.computed + count < len(seq.tokens):
                break  # the rest of this prompt goes in the next iterations
        self._close(group, passes)
        return budget

    def _admit(self, seq: S, spare: int) -> bool:
        # A block spare per row about to decode, or this step would preempt one at once.
        if not self._blocks.can_allocate(seq.tokens, spare=spare, table=seq.table):
            return False
        seq.computed = self._blocks.allocate(seq.table, seq.tokens)
        self._plan.admitted.append(seq)
        return True

    def _close(self, group: list[tuple[S, int]], passes: list[list[tuple[S, int]]]) -> None:
        if not group:
            return
        passes.append(group)
        self._planned += group
        for seq, count in group:
            if seq.computed + count == len(seq.tokens):
                self.joining.append(seq)
                self._rows += 1


def _reserve(plan: Plan[S], running: list[S], joining: list[S], blocks: BlockManager) -> None:
    """Room for one more token in every running row, oldest first; when the pool is full the
    newest row is preempted (freed, requeued first, recomputed later), never failed. Then the
    rows that join: one without room decodes from the next iteration on."""
    rows = list(running)
    i = 0
    while i < len(rows):
        if blocks.can_append(rows[i].table):
            blocks.append(rows[i].table)
            i += 1
        else:
            victim = rows.pop()
            blocks.deallocate(victim.table)
            victim.computed = 0
            plan.preempted.append(victim)
    plan.decode = rows
    for seq in joining:
        if blocks.can_append(seq.table):
            blocks.append(seq.table)
            plan.decode.append(seq)


def _prefill_order(
    waiting: Iterable[S], blocks: BlockManager, budget: int, room: int
) -> tuple[list[S], int]:
    """The waiting sequences this iteration may reach, the express lane first, and how many of
    them form it (admission.py). Only as many as could join are looked at: a cached-prefix
    lookup walks the prompt's blocks (its table keeps their keys: hashing a 50k-token prompt is
    ~2.5 ms once, a lookup ~0.5 ms)."""
    candidates = list(itertools.islice(waiting, max(room, 0)))
    if len(candidates) < 2:
        return candidates, 0
    order, express = prefill_order([_to_compute(seq, blocks) for seq in candidates], budget)
    return [candidates[i] for i in order], express


def _to_compute(seq: Seq, blocks: BlockManager) -> int:
    """Prompt tokens ``seq`` still has to prefill, a cached prefix counted as done."""
    if seq.table.blocks:
        return len(seq.tokens) - seq.computed
    hits = blocks.cached_prefix(seq.tokens, seq.table)
    return len(seq.tokens) - len(hits) * blocks.block_size


def _needs_a_chunk_of(seq: S, chunks: list[tuple[S, int]], block_size: int) -> bool:
    """Whether one of ``chunks`` completes a block that ``seq`` (not yet admitted) would reuse:
    its prompt starts with that chunk's tokens through the block's end."""
    if seq.table.blocks:
        return False
    for other, count in chunks:
        block_end = (other.computed // block_size + 1) * block_size  # the first it completes
        if block_end <= min(other.computed + count, len(seq.tokens) - 1) and (
            seq.tokens[:block_end] == other.tokens[:block_end]
        ):
            return True
    return False
