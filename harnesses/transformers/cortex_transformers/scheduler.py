"""The decode worker: one thread per loaded model runs continuous batching over paged KV.

Each iteration, under one token budget (``max_batch_tokens``): drop cancelled sequences; give
every running row room for its next token, preempting the newest rows (their blocks freed, their
tokens kept for recompute) when the pool is full; prefill waiting sequences, shorter ones beside
the head of the queue (admission.py) then first-come first served, chunk by chunk with what the
budget leaves after one token per running row (a waiting sequence is admitted once the pool
holds its prompt, its cached prefix counted as held; short chunks of several sequences share a
forward pass, runner.py); then one batched decode step. A 30k-token prompt therefore delays
running streams by one budget's worth of prefill at a time, a short request waits at most for
the chunk already running, and a prefix already in the pool is not computed again.

A failed decode step or packed prefill fails only the rows that cause it: the batch is re-run
row by row and only the rows that fail alone get the error (issue 11). The KV writes of a step
are idempotent, so re-running is safe.

The thread owns every sequence's state and the block manager; the event loop only appends to
``_waiting`` (under the lock) and sets ``Generation.cancelled``. Events go back through ``deliver``
(call_soon_threadsafe).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import torch

from cortex.errors import CortexError, InternalError, Unavailable
from cortex_transformers.admission import express_budget, prefill_order
from cortex_transformers.block_manager import BlockManager
from cortex_transformers.generation import Generation, Item, deliver
from cortex_transformers.logits import Picked, choose
from cortex_transformers.runner import Chunk, ModelRunner

log = logging.getLogger(__name__)

T = TypeVar("T")


class Scheduler:
    def __init__(
        self,
        runner: ModelRunner,
        blocks: BlockManager,
        *,
        max_batch: int,
        max_batch_tokens: int,
        name: str,
    ) -> None:
        self.blocks = blocks
        self.preempted = 0  # sequences sent back to recompute because the pool was full
        self._runner = runner
        self._max_batch = max_batch
        self._max_tokens = max_batch_tokens
        self._running: list[Generation] = []  # worker thread only, oldest first
        self._pending: deque[Generation] = deque()  # worker thread only: admitted order
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._waiting: deque[Generation] = deque()  # filled by the event loop
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"cortex-decode-{name}", daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        """Sequences waiting or running (approximate when read off the worker thread)."""
        return len(self._waiting) + len(self._pending) + len(self._running)

    def submit(self, seq: Generation) -> None:
        with self._lock:
            if self._stopping:
                raise Unavailable("the model is being unloaded")
            self._waiting.append(seq)
        self._wake.set()

    def cancel(self, seq: Generation) -> None:
        """Ask the worker to drop ``seq``; it leaves before the next decode step."""
        seq.cancelled = True
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the worker; sequences still waiting or running end with Unavailable."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                self._wake.clear()
                if self._stopping:
                    break
                with self._lock:
                    self._pending.extend(self._waiting)
                    self._waiting.clear()
                if not self._pending and not self._running:
                    self._wake.wait()
                    continue
                try:
                    self._iterate()
                except Exception as exc:  # a bug, not a bad request: fail what is in flight
                    log.exception("decode iteration failed")
                    self._fail_all(InternalError(f"generation failed: {exc}"))
        with self._lock:
            self._pending.extend(self._waiting)
            self._waiting.clear()
        self._fail_all(Unavailable("the model was unloaded"))

    def _fail_all(self, error: CortexError) -> None:
        left = [*self._pending, *self._running]
        self._pending.clear()
        self._running.clear()
        for seq in left:
            seq.finished = True
            self._release(seq)
        deliver([(seq, error) for seq in left])

    def _iterate(self) -> None:
        self._drop_cancelled()
        events = self._prefill(max(self._max_tokens - len(self._running), 1))
        self._reserve_decode()
        if self._running:
            events += self._decode()
        deliver(events)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in (*self._pending, *self._running) if s.cancelled]:
            self._release(seq)
        self._pending = deque(s for s in self._pending if not s.cancelled)
        self._running = [s for s in self._running if not s.cancelled]

    def _reserve_decode(self) -> None:
        """Room for one more token in every running row, oldest first; when the pool is full
        the newest row is preempted (freed, requeued first, recomputed later), never failed."""
        i = 0
        while i < len(self._running):
            table = self._running[i].table
            if self.blocks.can_append(table):
                self.blocks.append(table)
                i += 1
            else:
                self.preempted += 1
                victim = self._running.pop()
                self._release(victim)
                self._pending.appendleft(victim)

    def _prefill(self, budget: int) -> list[tuple[Generation, Item]]:
        """Admit and prefill pending sequences within ``budget`` tokens, short ones beside a
        long one (admission.py); those whose prompt is done sample their first token and join
        the running rows. The express lane's first tokens go out before the long prompt's chunk
        runs in the same iteration, so they do not wait for it."""
        order, express = self._prefill_order(budget)
        if not express:
            return self._prefill_in_order(order, budget, express=False)[0]
        lane = express_budget(budget)
        events, left = self._prefill_in_order(order[:express], lane, express=True)
        deliver(events)
        return self._prefill_in_order(order[express:], budget - lane + left, express=False)[0]

    def _prefill_in_order(
        self, order: list[Generation], budget: int, *, express: bool
    ) -> tuple[list[tuple[Generation, Item]], int]:
        """Prefill ``order`` within ``budget`` (short chunks of several sequences in one
        forward pass); returns the events and the budget left. An ``express`` sequence that
        does not fit the pool yet is skipped (the long prefill behind it goes on); any other
        stops the queue until rows free blocks, or fails if nothing could free them."""
        done: list[tuple[Generation, torch.Tensor]] = []
        events: list[tuple[Generation, Item]] = []
        group: list[Chunk] = []
        for seq in order:
            if budget <= 0 or len(self._running) + len(done) + len(group) >= self._max_batch:
                break
            if _needs_a_chunk_of(seq, group, self.blocks.block_size):
                self._run_prefill(group, done, events)  # then seq finds those blocks cached
            spare = len(self._running) + len(done) + len(group)
            if not seq.table.blocks and not self._allocate(seq, spare):
                if express:
                    continue  # it keeps its place in the queue
                if spare:
                    break  # wait for running rows to free blocks
                self._pending.remove(seq)
                events.append((seq, Unavailable("the prompt does not fit in the KV cache")))
                continue
            self._pending.remove(seq)
            count = min(budget, len(seq.tokens) - seq.computed)
            if group and not self._runner.joins(group, (seq, count)):
                self._run_prefill(group, done, events)
            group.append((seq, count))
            budget -= count + 1  # its chunk, and its first decode token
            if seq.computed + count < len(seq.tokens):
                break  # the rest of this prompt goes in the next iterations
        self._run_prefill(group, done, events)
        if done:
            events += self._sample_first(done)
        return events, budget

    def _prefill_order(self, budget: int) -> tuple[list[Generation], int]:
        """The pending sequences this iteration may reach, the express lane first, and how
        many of them form it (admission.py). Only as many as could join are looked at: a
        cached-prefix lookup walks the prompt's blocks (its table keeps their keys: hashing a
        50k-token prompt is ~2.5 ms once, a lookup ~0.5 ms)."""
        room = self._max_batch - len(self._running)
        candidates = list(itertools.islice(self._pending, max(room, 0)))
        if len(candidates) < 2:
            return candidates, 0
        order, express = prefill_order([self._to_compute(seq) for seq in candidates], budget)
        return [candidates[i] for i in order], express

    def _to_compute(self, seq: Generation) -> int:
        """Prompt tokens ``seq`` still has to prefill, a cached prefix counted as done."""
        if seq.table.blocks:
            return len(seq.tokens) - seq.computed
        hits = self.blocks.cached_prefix(seq.tokens, seq.table)
        return len(seq.tokens) - len(hits) * self.blocks.block_size

    def _run_prefill(
        self,
        group: list[Chunk],
        done: list[tuple[Generation, torch.Tensor]],
        events: list[tuple[Generation, Item]],
    ) -> None:
        """One forward pass for ``group`` (emptied); finished prompts go to ``done``, one still
        partway back to the head of the queue, failed ones (alone) to ``events``."""
        if not group:
            return
        chunks = list(group)
        group.clear()
        results = _per_row(
            lambda rows: list(self._runner.prefill([chunks[i] for i in rows])), len(chunks)
        )
        for (seq, _), result in zip(chunks, results, strict=True):
            if isinstance(result, Exception):
                self._release(seq)
                events.append((seq, _as_error(result, "prefill failed")))
            elif seq.computed < len(seq.tokens):
                self._pending.appendleft(seq)
            else:
                done.append((seq, result))

    def _allocate(self, seq: Generation, spare: int) -> bool:
        # Keep a block spare per row about to decode, or the next step would preempt at once.
        if not self.blocks.can_allocate(seq.tokens, spare=spare, table=seq.table):
            return False
        seq.computed = self.blocks.allocate(seq.table, seq.tokens)
        if seq.cached_tokens is None:  # the first admission, not a recompute after preemption
            seq.cached_tokens = seq.computed
        return True

    def _sample_first(
        self, done: list[tuple[Generation, torch.Tensor]]
    ) -> list[tuple[Generation, Item]]:
        seqs = [seq for seq, _ in done]
        logits = torch.stack([row for _, row in done])  # [N, V]
        results = _per_row(lambda rows: choose(logits[rows], [seqs[i] for i in rows]), len(seqs))
        events = self._accept(seqs, results)
        self._running += [seq for seq in seqs if not seq.finished]
        return events

    def _decode(self) -> list[tuple[Generation, Item]]:
        seqs = self._running
        results = _per_row(
            lambda rows: choose(
                self._runner.decode([seqs[i] for i in rows]), [seqs[i] for i in rows]
            ),
            len(seqs),
        )
        events = self._accept(seqs, results)
        self._running = [seq for seq in seqs if not seq.finished]
        return events

    def _accept(
        self, seqs: list[Generation], results: list[Picked | Exception]
    ) -> list[tuple[Generation, Item]]:
        """Each sequence takes its token or its error; finished ones give back their blocks."""
        events: list[tuple[Generation, Item]] = []
        for seq, result in zip(seqs, results, strict=True):
            if isinstance(result, Exception):
                seq.finished = True
                events.append((seq, _as_error(result, "generation failed")))
            else:
                events.append((seq, seq.accept(*result)))
            if seq.finished:
                self._release(seq)
        return events

    def _release(self, seq: Generation) -> None:
        self.blocks.deallocate(seq.table)
        seq.computed = 0


def _per_row(step: Callable[[list[int]], list[T]], count: int) -> list[T | Exception]:
    """``step(rows)`` gives the result (a next token, a prefill's logits) of each of those rows;
    if it fails for all ``count`` rows at once, each row is retried alone and only the rows that
    fail alone get the error (one poisoned request must not end the batch: issue 11). The
    retried forward passes rewrite the same KV slots with the same tokens, so a retry is safe."""
    try:
        return list(step(list(range(count))))
    except Exception as exc:
        if count == 1:
            log.exception("generation step failed")
            return [exc]
        log.exception("generation step failed; retrying its %d rows one by one", count)
    results: list[T | Exception] = []
    for row in range(count):
        try:
            results += step([row])
        except Exception as exc:
            log.exception("generation step failed for one sequence")
            results.append(exc)
    return results


def _needs_a_chunk_of(seq: Generation, group: list[Chunk], block_size: int) -> bool:
    """Whether a chunk in ``group`` completes a block that ``seq`` (not yet admitted) would
    reuse: its prompt starts with that chunk's tokens through the block's end. Running the group
    first turns those blocks into cache hits instead of computing them twice (agent sessions
    sharing a system prompt arrive together)."""
    if seq.table.blocks:
        return False
    for other, count in group:
        block_end = (other.computed // block_size + 1) * block_size  # the first it completes
        if block_end <= min(other.computed + count, len(seq.tokens) - 1) and (
            seq.tokens[:block_end] == other.tokens[:block_end]
        ):
            return True
    return False


def _as_error(exc: Exception, what: str) -> CortexError:
    return exc if isinstance(exc, CortexError) else InternalError(f"{what}: {exc}")
