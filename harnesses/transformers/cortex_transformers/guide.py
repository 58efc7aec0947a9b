"""One sequence's grammar state: which tokens may come next (issue 21).

A ``Guide`` follows a sequence's sampled tokens through its constraint. While it ``masks``, the
worker asks it to ``fill`` one row of the step's bitmask (the batch shares one array) and the
sampler keeps only the allowed tokens. It lives in the ``Generation`` and sees only sampled
tokens, so preemption and recompute (which replay the prompt, not the sampling) leave it as it
was. Written by the decode worker only.

Lazy tool calls (``auto``): no mask until the reply's bytes contain the opening tag; the bytes
after it (a token can end past the tag) are fed to a fresh matcher of the call's grammar, which
then masks until the closing tag. Free text follows, or only the end when parallel calls are
off.
"""

from __future__ import annotations

import logging

import llguidance
import llguidance.numpy
import numpy as np

from cortex.neuron.constraints import Constraint, ToolCalls
from cortex_transformers.grammar import GrammarCache

log = logging.getLogger(__name__)


class Guide:
    def __init__(
        self, constraint: Constraint, grammars: GrammarCache, eos_ids: frozenset[int]
    ) -> None:
        self._grammars = grammars
        self._grammar = grammars.compile(constraint)  # a cache hit after TransformersModel.prepare
        self._eos = sorted(eos_ids)
        lazy = isinstance(constraint, ToolCalls) and not constraint.forced
        self._trigger = (
            constraint.open.encode() if lazy and isinstance(constraint, ToolCalls) else b""
        )
        self._one_call = isinstance(constraint, ToolCalls) and not constraint.parallel
        self._matcher: llguidance.LLMatcher | None = (
            None if lazy else grammars.matcher(self._grammar)
        )
        self._tail = b""  # lazy: the reply's last bytes, where the opening tag may be forming
        self._must_end = False  # a lazy single call is complete: only the end may follow
        self._rejected = False  # a sampled token was refused (a bug): logged once

    @property
    def masks(self) -> bool:
        """Whether the next token is constrained."""
        return self._matcher is not None or self._must_end

    def fill(self, bitmask: np.ndarray, row: int) -> None:
        """Write the allowed next tokens into ``bitmask[row]`` ([rows, ceil(vocab / 32)] int32).
        End-of-sequence ids are allowed exactly when the grammar is complete."""
        words = bitmask[row].view(np.uint32)
        matcher = self._matcher
        if matcher is None or self._must_end or matcher.is_stopped():
            words[:] = 0
            complete = True
        else:
            llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, row)
            complete = matcher.is_accepting()
        for token in self._eos:
            if complete:
                words[token >> 5] |= np.uint32(1 << (token & 31))
            else:
                words[token >> 5] &= ~np.uint32(1 << (token & 31))
        if not words.any():  # a grammar error left nothing: end rather than emit garbage
            for token in self._eos:
                words[token >> 5] |= np.uint32(1 << (token & 31))

    def accept(self, token: int) -> None:
        """Advance past the sampled ``token`` (not an end-of-sequence one)."""
        matcher = self._matcher
        if matcher is not None:
            if not matcher.consume_token(token) and not self._rejected:
                self._rejected = True  # once per sequence: the matcher stays in its error state
                log.warning("grammar rejected a sampled token: %s", matcher.get_error())
            if self._trigger and matcher.is_stopped():  # a lazy call is complete
                self._matcher = None
                self._must_end = self._one_call
            return
        if self._trigger and not self._must_end:
            self._watch(self._grammars.text_of(token))

    def _watch(self, piece: bytes) -> None:
        """Lazy mode: look for the opening tag in the reply's bytes."""
        self._tail += piece
        at = self._tail.find(self._trigger)
        if at < 0:
            self._tail = self._tail[-(len(self._trigger) - 1) :] if len(self._trigger) > 1 else b""
            return
        rest = self._tail[at + len(self._trigger) :]
        self._tail = b""
        matcher = self._grammars.matcher(self._grammar, "tools")
        if rest and not matcher.consume_tokens(self._grammars.tokenizer.tokenize_bytes(rest)):
            return  # what followed the tag is no call: leave this one unconstrained
        self._matcher = matcher
