"""Choosing the next token for every row of a batch in one vectorised pass.

Temperature, top-k and top-p are per-row tensors and no step sorts the vocabulary (a sort of
16 x 32000 logits takes ~50 ms on one CPU core, more than a decode step of a small model). Top-k
keeps the tokens at or above each row's k-th largest score (one ``topk``). Top-p samples by
rejection, as FlashInfer does: draw from the row's distribution; accept the token if the
probability mass strictly above it is at most top_p (exactly the sorted-prefix rule: keep the
smallest set of most likely tokens holding top_p); otherwise drop it and every less likely token
and draw again. Each draw is an inverse-CDF lookup (cumsum + searchsorted); rounds are few
because every rejection removes the rejected token's whole tail.

The randomness is one uniform number per draw from the row's own ``random.Random`` (seeded from
the request, else from the OS), so a fixed seed reproduces its output whatever else shares the
batch, with no per-row device work. Greedy rows take the argmax of the raw logits, exactly as
``generate`` does.
"""

from __future__ import annotations

import random

import torch

from cortex.neuron.harness import SamplingParams

MIN_TEMPERATURE = 1e-4
"""Below this a temperature is greedy: dividing logits by a subnormal (1e-39) overflows to inf
and the probabilities to NaN (issue 11)."""

_MAX_ROUNDS = 64  # top-p rejection rounds before a row falls back to its most likely token


class Sampler:
    """Sampling parameters, penalty state and random stream of one sequence."""

    def __init__(self, params: SamplingParams) -> None:
        self.greedy = params.temperature < MIN_TEMPERATURE or params.top_k == 1
        self.temperature = params.temperature
        self.top_k = params.top_k
        self.top_p = params.top_p
        self.frequency = params.frequency_penalty
        self.presence = params.presence_penalty
        self.repetition = params.repetition_penalty
        self.logit_bias = params.logit_bias or {}
        self.logprobs = params.logprobs
        # Reply token counts ([V], for frequency/presence) and prompt-or-reply tokens ([V] bool,
        # for repetition), made on the first step that needs them (logits.py).
        self.counts: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        self._rng = random.Random(params.seed)  # None: seeded from os.urandom

    @property
    def penalised(self) -> bool:
        return bool(self.frequency or self.presence) or self.repetition != 1.0

    def observe(self, token: int) -> None:
        """Count a sampled token for the penalties (no-op when there are none)."""
        if self.counts is not None:
            self.counts[token] += 1
        if self.seen is not None:
            self.seen[token] = True

    def uniform(self) -> float:
        """The next number in [0, 1) of this sequence's random stream."""
        return self._rng.random()


def next_tokens(logits: torch.Tensor, samplers: list[Sampler]) -> list[int]:
    """logits: [B, V]; one token per row."""
    tokens: list[int] = logits.argmax(-1).tolist()
    rows = [i for i, s in enumerate(samplers) if not s.greedy]
    if rows:
        picked = _sample(logits[rows], [samplers[i] for i in rows])
        for row, token in zip(rows, picked, strict=True):
            tokens[row] = token
    return tokens


def _sample(logits: torch.Tensor, samplers: list[Sampler]) -> list[int]:
    """logits: [S, V] of the sampled rows."""
    device = logits.device
    temperature = torch.tensor([s.temperature for s in samplers], device=device)  # [S]
    scores = logits.float() / temperature[:, None]  # [S, V]
    top_k = [s.top_k for s in samplers]
    if any(0 < k < scores.shape[-1] for k in top_k):
        kth = _kth_scores(scores, top_k)
        scores.masked_fill_(scores < kth[:, None], float("-inf"))
    probs = scores.softmax(-1)  # [S, V]
    top_p = torch.tensor([s.top_p for s in samplers], device=device)  # [S]
    rows = torch.arange(len(samplers), device=device)
    tokens = _draw(probs, samplers, device)
    if all(s.top_p >= 1.0 for s in samplers):
        return list(tokens.tolist())
    for _ in range(_MAX_ROUNDS):
        p_token = probs[rows, tokens]
        above = (probs * (probs > p_token[:, None])).sum(-1)
        reject = (above > top_p).nonzero()[:, 0]
        if len(reject) == 0:
            break
        kept = probs[reject]
        kept.masked_fill_(kept <= p_token[reject, None], 0.0)  # the rejected token and its tail
        probs[reject] = kept
        tokens[reject] = _draw(kept, [samplers[i] for i in reject.tolist()], device)
    else:  # pathological ties: the most likely token is always inside top_p
        tokens = torch.where(above > top_p, probs.argmax(-1), tokens)
    chosen: list[int] = tokens.tolist()
    return chosen


def _kth_scores(scores: torch.Tensor, top_k: list[int]) -> torch.Tensor:
    """Each row's k-th largest score ([S]); -inf for rows without top-k."""
    vocab = scores.shape[-1]
    ks = [k if 0 < k < vocab else vocab for k in top_k]
    largest = scores.topk(max(k for k in ks if k < vocab), dim=-1).values  # [S, K], descending
    index = torch.tensor([min(k, largest.shape[-1]) - 1 for k in ks], device=scores.device)
    kth = largest.gather(1, index[:, None])[:, 0]
    no_limit = torch.tensor([k == vocab for k in ks], device=scores.device)
    return kth.masked_fill(no_limit, float("-inf"))


def _draw(probs: torch.Tensor, samplers: list[Sampler], device: torch.device) -> torch.Tensor:
    """One token per row of ``probs`` [R, V] (unnormalised, >= 0) by inverse CDF; [R]."""
    cdf = probs.cumsum(-1)
    u = torch.tensor([s.uniform() for s in samplers], device=device)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    picked = picked.clamp(max=probs.shape[-1] - 1)
    # right=True lands on a positive-probability token except when rounding reaches the end.
    ok = probs.gather(1, picked[:, None])[:, 0] > 0
    return torch.where(ok, picked, probs.argmax(-1))
