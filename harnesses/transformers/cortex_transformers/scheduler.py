"""The decode worker: one thread per loaded model runs continuous batching.

Between two decode steps it drops cancelled sequences, admits waiting ones (prefill, first
token) up to ``max_batch``, then decodes one token for every running row. A prompt longer than
``prefill_chunk`` tokens is prefilled one chunk per iteration, between decode steps, so a long
prompt (a coding agent's 20k-token context) delays the running streams by one chunk at a time
instead of stalling them for its whole prefill. The thread owns the batch and every sequence's
state; the event loop only appends to ``_waiting`` (under the lock) and sets
``Sequence.cancelled``. Events go back through ``deliver`` (call_soon_threadsafe).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from cortex.errors import CortexError, InternalError, Unavailable
from cortex_transformers.batch import DecodeBatch
from cortex_transformers.sampling import next_tokens
from cortex_transformers.sequence import Item, Sequence, deliver

log = logging.getLogger(__name__)

PREFILL_CHUNK_TOKENS = 512


@dataclass
class _Prefill:
    """A sequence part-way through its prompt: ``done`` tokens are in ``cache``."""

    seq: Sequence
    cache: Cache | None = None
    done: int = 0


class Scheduler:
    def __init__(
        self,
        batch: DecodeBatch,
        *,
        max_batch: int,
        name: str,
        prefill_chunk: int = PREFILL_CHUNK_TOKENS,
    ) -> None:
        self._batch = batch
        self._max_batch = max_batch
        self._chunk = prefill_chunk
        self._prefilling: _Prefill | None = None  # worker thread only
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._waiting: deque[Sequence] = deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"cortex-decode-{name}", daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        """Sequences waiting or running (approximate when read off the worker thread)."""
        return len(self._waiting) + len(self._batch.rows) + (self._prefilling is not None)

    def submit(self, seq: Sequence) -> None:
        with self._lock:
            if self._stopping:
                raise Unavailable("the model is being unloaded")
            self._waiting.append(seq)
        self._wake.set()

    def cancel(self, seq: Sequence) -> None:
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
                if not self._waiting and not self._batch.rows and self._prefilling is None:
                    self._wake.wait()
                    continue
                try:
                    self._admit()
                    if self._batch.rows:
                        self._step()
                except Exception as exc:  # a failed step fails its sequences, not the worker
                    log.exception("decode step failed")
                    error = exc if isinstance(exc, CortexError) else InternalError(str(exc))
                    self._fail(list(self._batch.rows), error)
                    self._batch.keep([])
        with self._lock:
            left = list(self._waiting) + list(self._batch.rows)
            self._waiting.clear()
        if self._prefilling is not None:
            left.append(self._prefilling.seq)
            self._prefilling = None
        self._fail(left, Unavailable("the model was unloaded"))
        self._batch.keep([])

    def _admit(self) -> None:
        self._drop_cancelled()
        events: list[tuple[Sequence, Item]] = []
        while len(self._batch.rows) < self._max_batch:
            job = self._prefilling or self._next_waiting()
            if job is None:
                break
            self._prefilling = None
            seq = job.seq
            if seq.cancelled:
                continue
            try:
                end = job.done + self._chunk
                cache, logits = self._batch.prefill(seq.prompt[job.done : end], job.cache)
                job.cache, job.done = cache, min(end, len(seq.prompt))
                if job.done < len(seq.prompt):
                    self._prefilling = job
                    if self._batch.rows:
                        break  # the running rows decode a step before the next chunk
                    continue
                (token,) = next_tokens(logits[None], [seq.sampler])
                events.append((seq, seq.accept(token)))
            except Exception as exc:
                log.exception("prefill failed")
                events.append((seq, InternalError(f"prefill failed: {exc}")))
                continue
            if not seq.finished:
                self._batch.join(seq, cache, token)
        deliver(events)

    def _next_waiting(self) -> _Prefill | None:
        with self._lock:
            return _Prefill(self._waiting.popleft()) if self._waiting else None

    def _step(self) -> None:
        rows = self._batch.rows
        logits = self._batch.step()
        tokens = next_tokens(logits, [seq.sampler for seq in rows])
        self._batch.advance(tokens)
        deliver([(seq, seq.accept(token)) for seq, token in zip(rows, tokens, strict=True)])
        self._batch.keep([i for i, seq in enumerate(rows) if not (seq.finished or seq.cancelled)])

    def _drop_cancelled(self) -> None:
        rows = self._batch.rows
        self._batch.keep([i for i, seq in enumerate(rows) if not seq.cancelled])

    @staticmethod
    def _fail(seqs: list[Sequence], error: BaseException) -> None:
        deliver([(seq, error) for seq in seqs])
