"""Choosing the next token for every row of a batch in one vectorised pass.

Temperature, top-k and top-p are per-row tensors; the sampled rows share one sort, one softmax
and one inverse-CDF lookup. The randomness is one uniform number per row drawn from that
sequence's own ``random.Random`` (seeded from the request, else from the OS), so a fixed seed
reproduces its output whatever else shares the batch, with no per-row device work or sync.
Greedy rows take the argmax of the raw logits, exactly as ``generate`` does.
"""

from __future__ import annotations

import random

import torch

from cortex.neuron.harness import SamplingParams

MIN_TEMPERATURE = 1e-4
"""Below this a temperature is greedy: dividing logits by a subnormal (1e-39) overflows to inf
and the probabilities to NaN (issue 11)."""


class Sampler:
    """Sampling parameters and random stream of one sequence."""

    def __init__(self, params: SamplingParams) -> None:
        self.greedy = params.temperature < MIN_TEMPERATURE or params.top_k == 1
        self.temperature = params.temperature
        self.top_k = params.top_k
        self.top_p = params.top_p
        self._rng = random.Random(params.seed)  # None: seeded from os.urandom

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
    device, vocab = logits.device, logits.shape[-1]
    temperature = torch.tensor([s.temperature for s in samplers], device=device)  # [S]
    top_k = torch.tensor([s.top_k if s.top_k > 0 else vocab for s in samplers], device=device)
    top_p = torch.tensor([s.top_p for s in samplers], device=device)  # [S]
    scores, order = (logits.float() / temperature[:, None]).sort(-1, descending=True)  # [S, V]
    rank = torch.arange(vocab, device=device)
    scores.masked_fill_(rank[None, :] >= top_k[:, None], float("-inf"))
    probs = scores.softmax(-1)
    # Drop a token when the tokens above it already hold top_p; the first always stays.
    probs.masked_fill_(probs.cumsum(-1) - probs > top_p[:, None], 0.0)
    cdf = probs.cumsum(-1)  # [S, V], non-decreasing; dropped tokens form a flat tail
    u = torch.tensor([s.uniform() for s in samplers], device=device) * cdf[:, -1]
    pick = torch.searchsorted(cdf, u[:, None], right=True)[:, 0]  # [S]
    last_kept = (probs > 0).sum(-1).clamp(min=1) - 1  # rounding must not pick a dropped token
    pick = torch.minimum(pick, last_kept)
    chosen: list[int] = order.gather(1, pick[:, None])[:, 0].tolist()
    return chosen
