"""The decode worker: one thread per loaded model runs continuous batching over paged KV.

Each iteration the worker takes what the event loop handed over (new sequences, cancellation
requests), asks the planner what to do (``schedule``, planner.py: admission, the express lane,
chunk sizes, preemption, refusal) and runs the plan: the express lane's prefill passes, whose
first tokens go out at once, then the other prefill passes (several short prompts packed into one
forward pass, runner.py), then one batched decode step; tokens are picked by ``logits.choose``
and events go back to asyncio through ``generation.deliver`` (``call_soon_threadsafe``).

A failed decode step or packed prefill fails only the rows that cause it: the batch is re-run
row by row and only the rows that fail alone get the error (issue 11). The KV writes of a step
are idempotent, so re-running is safe.

One owner: this thread alone writes a sequence's state and status, the block manager, the pool
and the runner, and a sequence ends only through ``finish``, here. The event loop hands over
new sequences (``submit``) and cancellation requests (``cancel``) through an inbox under a lock,
and wakes the worker.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import torch

from cortex.errors import CortexError, InternalError, Unavailable
from cortex_transformers.block_manager import BlockManager
from cortex_transformers.generation import Generation, Item, Status, deliver
from cortex_transformers.logits import Picked, choose
from cortex_transformers.planner import Plan, schedule
from cortex_transformers.runner import Chunk, ModelRunner

log = logging.getLogger(__name__)

T = TypeVar("T")
Events = list[tuple[Generation, Item]]


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
        self.runner = runner
        self.max_batch_tokens = max_batch_tokens  # tokens an iteration computes at most
        self.preempted = 0  # sequences sent back to recompute because the pool was full
        self._max_batch = max_batch
        self._waiting: deque[Generation] = deque()  # worker only: queue order
        self._running: list[Generation] = []  # worker only: decoding rows, oldest first
        self._lock = threading.Lock()  # guards the inbox: _arrived, _cancels, _stopping
        self._wake = threading.Event()
        self._arrived: list[Generation] = []
        self._cancels: list[Generation] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"cortex-decode-{name}", daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        """Sequences waiting or running (approximate when read off the worker thread)."""
        return len(self._arrived) + len(self._waiting) + len(self._running)

    def submit(self, *seqs: Generation) -> None:
        """Hand ``seqs`` to the worker, which sees them all in one iteration (their prefills
        may share forward passes). Any thread; raises Unavailable once ``stop`` was called."""
        with self._lock:
            if self._stopping:
                raise Unavailable("the model is being unloaded")
            self._arrived.extend(seqs)
        self._wake.set()

    def cancel(self, seq: Generation) -> None:
        """Ask the worker to end ``seq`` (its consumer is gone): it leaves before the next
        decode step. Any thread; a sequence that ended already is left as it ended."""
        with self._lock:
            self._cancels.append(seq)
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the worker; sequences still waiting or running end with Unavailable."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def finish(self, seq: Generation, status: Status) -> None:
        """The one way a sequence ends (worker thread only): its status is set, once; its blocks
        go back to the pool (their cached prefixes kept); it leaves the queue or the batch.
        Ending an ended sequence does nothing (a cancellation may cross its last token)."""
        if seq.status.ended:
            return
        seq.status = status
        self.blocks.deallocate(seq.table)
        seq.computed = 0
        if seq in self._running:
            self._running.remove(seq)
        elif seq in self._waiting:
            self._waiting.remove(seq)

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                self._wake.clear()
                if self._stopping:
                    break
                self._take_inbox()
                if not self._waiting and not self._running:
                    self._wake.wait()
                    continue
                try:
                    self._iterate()
                except Exception as exc:  # a bug, not a bad request: fail what is in flight
                    log.exception("decode iteration failed")
                    self._fail_all(InternalError(f"generation failed: {exc}"))
        self._take_inbox()
        self._fail_all(Unavailable("the model was unloaded"))

    def _take_inbox(self) -> None:
        """New sequences join the queue; cancelled ones end and give their blocks back."""
        with self._lock:
            arrived, self._arrived = self._arrived, []
            cancels, self._cancels = self._cancels, []
        self._waiting.extend(arrived)
        for seq in cancels:
            self.finish(seq, Status.CANCELLED)

    def _fail_all(self, error: CortexError) -> None:
        left = [*self._waiting, *self._running]
        for seq in left:
            self.finish(seq, Status.FAILED)
        self._deliver([(seq, error) for seq in left])

    def _iterate(self) -> None:
        plan = schedule(
            self._waiting,
            self._running,
            self.blocks,
            budget=self.max_batch_tokens,
            max_batch=self._max_batch,
            joins=self.runner.joins,
        )
        events = self._begin(plan)
        if plan.express:  # their first tokens go out before the long prompt's chunk runs
            self._deliver(events + self._prefill(plan.express))
            events = []
        events += self._prefill(plan.prefill)
        rows = [seq for seq in plan.decode if seq.status is Status.RUNNING]
        if rows:
            events += self._decode(rows)
        self._deliver(events)

    def _begin(self, plan: Plan[Generation]) -> Events:
        """What the plan decided before any forward pass: refused prompts end, preempted rows
        go back to the head of the queue, admitted sequences note their cached prefix."""
        events: Events = []
        for seq in plan.refused:
            events.append((seq, Unavailable("the prompt does not fit in the KV cache")))
            self.finish(seq, Status.FAILED)
        for seq in plan.preempted:  # newest first, so the oldest of them ends up at the head
            self._running.remove(seq)
            seq.status = Status.WAITING
            self._waiting.appendleft(seq)
        self.preempted += len(plan.preempted)
        for seq in plan.admitted:
            if seq.cached_tokens is None:  # the first admission, not a recompute
                seq.cached_tokens = seq.computed
        return events

    def _prefill(self, passes: list[list[Chunk]]) -> Events:
        """Run ``passes`` in order. A prompt still partway goes back to the head of the queue,
        a row that fails (alone) ends with its error, and the prompts done sample their first
        token and join the running rows."""
        done: list[tuple[Generation, torch.Tensor]] = []
        events: Events = []
        for chunks in passes:
            for (seq, _), result in zip(chunks, self._forward(chunks), strict=True):
                if isinstance(result, Exception):
                    events.append((seq, _as_error(result, "prefill failed")))
                    self.finish(seq, Status.FAILED)
                elif seq.computed < len(seq.tokens):
                    self._waiting.remove(seq)
                    self._waiting.appendleft(seq)
                else:
                    done.append((seq, result))
        if done:
            events += self._sample_first(done)
        return events

    def _forward(self, chunks: list[Chunk]) -> list[torch.Tensor | Exception]:
        """One prefill pass; each chunk's logits after its last token [V], or its error."""
        return _per_row(
            lambda rows: list(self.runner.prefill([chunks[i] for i in rows])), len(chunks)
        )

    def _sample_first(self, done: list[tuple[Generation, torch.Tensor]]) -> Events:
        seqs = [seq for seq, _ in done]
        logits = torch.stack([row for _, row in done])  # [N, V]
        results = _per_row(lambda rows: choose(logits[rows], [seqs[i] for i in rows]), len(seqs))
        events = self._accept(seqs, results)
        for seq in seqs:
            if not seq.status.ended:
                self._waiting.remove(seq)
                seq.status = Status.RUNNING
                self._running.append(seq)
        return events

    def _decode(self, seqs: list[Generation]) -> Events:
        results = _per_row(
            lambda rows: choose(
                self.runner.decode([seqs[i] for i in rows]), [seqs[i] for i in rows]
            ),
            len(seqs),
        )
        return self._accept(seqs, results)

    def _accept(self, seqs: list[Generation], results: list[Picked | Exception]) -> Events:
        """Each sequence takes its token or its error; those that end, end here."""
        events: Events = []
        for seq, result in zip(seqs, results, strict=True):
            if isinstance(result, Exception):
                events.append((seq, _as_error(result, "generation failed")))
                self.finish(seq, Status.FAILED)
                continue
            event = seq.accept(*result)
            events.append((seq, event))
            if event.finish_reason is not None:
                self.finish(seq, Status.FINISHED)
        return events

    def _deliver(self, events: Events) -> None:
        for seq in deliver(events):  # its consumer's event loop is closed: nobody listens
            self.finish(seq, Status.CANCELLED)


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


def _as_error(exc: Exception, what: str) -> CortexError:
    return exc if isinstance(exc, CortexError) else InternalError(f"{what}: {exc}")
