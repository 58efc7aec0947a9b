"""One generation request as the decode worker sees it, and the way its events reach asyncio."""

from __future__ import annotations

import asyncio
import enum
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch

from cortex.neuron.constraints import TokenLogprob, TopLogprob
from cortex.neuron.harness import SamplingParams, TokenEvent
from cortex_transformers.block_manager import BlockTable
from cortex_transformers.detokenize import Decode, IncrementalDetokenizer
from cortex_transformers.guide import Guide
from cortex_transformers.sampling import Sampler
from cortex_transformers.thinking import ThinkBudget

TokenBytes = Callable[[int], bytes]

Item = TokenEvent | BaseException
"""What a consumer's queue carries: an event, or the error that ended the sequence."""


class Status(enum.Enum):
    """Where a sequence is. Written by the decode worker alone (scheduler.py), and set to one of
    the ended states only by ``Scheduler.finish``."""

    WAITING = "waiting"  # queued for admission, prefilling, or preempted for recompute
    RUNNING = "running"  # decoding
    FINISHED = "finished"  # stopped (EOS) or reached its length: its last event says which
    CANCELLED = "cancelled"  # its consumer went away
    FAILED = "failed"  # ended with an error, sent to its consumer

    @property
    def ended(self) -> bool:
        return self not in (Status.WAITING, Status.RUNNING)


class Generation:
    """State of one sequence, owned by the worker thread; asyncio only reads ``queue``.

    ``tokens`` is the prompt then every sampled token; the last sampled one is the next decode
    input, so a decoding sequence has ``computed == len(tokens) - 1`` tokens' KV in the pool. A
    preempted sequence keeps ``tokens`` and is prefilled again from them (recompute).
    """

    def __init__(
        self,
        prompt: list[int],
        params: SamplingParams,
        *,
        eos_ids: frozenset[int],
        context_length: int,
        decode: Decode,
        loop: asyncio.AbstractEventLoop,
        guide: Guide | None = None,
        token_bytes: TokenBytes | None = None,
        think: ThinkBudget | None = None,
    ) -> None:
        self.prompt = prompt
        self.tokens = list(prompt)
        self.table = BlockTable()
        self.computed = 0  # leading tokens whose KV is in the pool
        self.cached_tokens: int | None = None  # prompt tokens reused at first admission
        self.sampler = Sampler(params)
        self.guide = guide  # the constraint's state, None when the reply is free
        self.think = think  # the thinking budget's state, None without one
        self._token_bytes = token_bytes  # for logprobs' token texts
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.loop = loop
        self.status = Status.WAITING
        self._max_new = params.max_new_tokens
        self._eos_ids = frozenset() if params.ignore_eos else eos_ids
        self._context_length = context_length
        self._detok = IncrementalDetokenizer(decode)
        self._generated = 0

    def accept(self, token: int, logprob: TokenLogprob | None = None) -> TokenEvent:
        """Record the token sampled for this sequence and return the event to send; an event
        with a ``finish_reason`` is its last (the worker then ends it)."""
        if token in self._eos_ids:
            return TokenEvent(
                text=self._detok.flush(),
                completion_tokens=self._generated,
                cached_tokens=self.cached_tokens or 0,
                finish_reason="stop",
            )
        self.tokens.append(token)
        self._generated += 1
        if self.guide is not None:
            self.guide.accept(token)
        if self.think is not None:
            self.think.observe(token)
        self.sampler.observe(token)
        logprobs = [logprob] if logprob is not None else None
        text = self._detok.add(token)
        full = len(self.prompt) + self._generated >= self._context_length
        if self._generated >= self._max_new or full:
            text += self._detok.flush()
            return TokenEvent(
                text=text,
                completion_tokens=self._generated,
                cached_tokens=self.cached_tokens or 0,
                finish_reason="length",
                logprobs=logprobs,
            )
        return TokenEvent(
            text=text,
            completion_tokens=self._generated,
            cached_tokens=self.cached_tokens or 0,
            logprobs=logprobs,
        )

    def describe(self, logprobs: torch.Tensor, token: int) -> TokenLogprob:
        """``token``'s entry for the reply's logprobs; ``logprobs``: [V], log-softmax of the
        raw logits of the step that sampled it."""
        top: list[TopLogprob] = []
        if k := self.sampler.logprobs:
            values, ids = logprobs.topk(k)
            for tid, value in zip(ids.tolist(), values.tolist(), strict=True):
                text, raw = self._text_of(tid)
                top.append(TopLogprob(token=text, bytes=raw, logprob=value))
        text, raw = self._text_of(token)
        return TokenLogprob(token=text, bytes=raw, logprob=float(logprobs[token]), top=top)

    def _text_of(self, token: int) -> tuple[str, list[int]]:
        raw = self._token_bytes(token) if self._token_bytes is not None else b""
        return raw.decode("utf-8", errors="replace"), list(raw)


def deliver(items: Iterable[tuple[Generation, Item]]) -> list[Generation]:
    """Hand items to their consumers: one ``call_soon_threadsafe`` per event loop per step.
    Returns the sequences whose consumer's event loop is closed: nobody listens to them any more."""
    gone: list[Generation] = []
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Generation, Item]]] = defaultdict(list)
    for seq, item in items:
        by_loop[seq.loop].append((seq, item))
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, batch)
        except RuntimeError:  # the consumer's loop is closed
            gone += [seq for seq, _ in batch]
    return gone


def _put_all(batch: list[tuple[Generation, Item]]) -> None:
    for seq, item in batch:
        seq.queue.put_nowait(item)
