"""One generation request as the decode worker sees it, and the way its events reach asyncio."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable

from cortex.neuron.harness import SamplingParams, TokenEvent
from cortex_transformers.block_manager import BlockTable
from cortex_transformers.detokenize import Decode, IncrementalDetokenizer
from cortex_transformers.sampling import Sampler

Item = TokenEvent | BaseException
"""What a consumer's queue carries: an event, or the error that ended the sequence."""


class Generation:
    """State of one sequence. Owned by the worker thread, except ``cancelled`` (set by asyncio).

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
    ) -> None:
        self.prompt = prompt
        self.tokens = list(prompt)
        self.table = BlockTable()
        self.computed = 0  # leading tokens whose KV is in the pool
        self.cached_tokens: int | None = None  # prompt tokens reused at first admission
        self.sampler = Sampler(params)
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.loop = loop
        self.cancelled = False
        self.finished = False
        self._max_new = params.max_new_tokens
        self._eos_ids = frozenset() if params.ignore_eos else eos_ids
        self._context_length = context_length
        self._detok = IncrementalDetokenizer(decode)
        self._generated = 0

    def accept(self, token: int) -> TokenEvent:
        """Record the token sampled for this sequence and return the event to send."""
        if token in self._eos_ids:
            self.finished = True
            return TokenEvent(
                text=self._detok.flush(),
                completion_tokens=self._generated,
                cached_tokens=self.cached_tokens or 0,
                finish_reason="stop",
            )
        self.tokens.append(token)
        self._generated += 1
        text = self._detok.add(token)
        full = len(self.prompt) + self._generated >= self._context_length
        if self._generated >= self._max_new or full:
            self.finished = True
            text += self._detok.flush()
            return TokenEvent(
                text=text,
                completion_tokens=self._generated,
                cached_tokens=self.cached_tokens or 0,
                finish_reason="length",
            )
        return TokenEvent(
            text=text, completion_tokens=self._generated, cached_tokens=self.cached_tokens or 0
        )


def deliver(items: Iterable[tuple[Generation, Item]]) -> None:
    """Hand items to their consumers: one ``call_soon_threadsafe`` per event loop per step."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Generation, Item]]] = defaultdict(list)
    for seq, item in items:
        by_loop[seq.loop].append((seq, item))
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, batch)
        except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
            for seq, _ in batch:
                seq.cancelled = True


def _put_all(batch: list[tuple[Generation, Item]]) -> None:
    for seq, item in batch:
        seq.queue.put_nowait(item)
