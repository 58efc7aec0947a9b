"""Choosing the next token for each row of a batch, with per-sequence parameters and seeds.

Greedy rows share one batched argmax. Sampled rows are handled one by one, each with its own
``torch.Generator`` seeded from the request, so a fixed seed reproduces its output whatever else
shares the batch.
"""

from __future__ import annotations

import torch

from cortex.neuron.harness import SamplingParams


class Sampler:
    """Sampling state of one sequence."""

    def __init__(self, params: SamplingParams) -> None:
        self.greedy = params.temperature <= 0 or params.top_k == 1
        self._temperature = params.temperature
        self._top_k = params.top_k
        self._top_p = params.top_p
        self._seed = params.seed
        self._generator: torch.Generator | None = None

    def sample(self, logits: torch.Tensor) -> int:
        """logits: [V] for this row; returns the sampled token id."""
        scores = logits.float() / self._temperature
        if 0 < self._top_k < scores.shape[-1]:
            kth = torch.topk(scores, self._top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self._top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            probs = ordered.softmax(-1)
            # Drop a token when the tokens above it already hold top_p; the first always stays.
            drop = (probs.cumsum(-1) - probs) > self._top_p
            scores = scores.index_fill(0, order[drop], float("-inf"))
        probs = scores.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self._rng(logits.device)))

    def _rng(self, device: torch.device) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=device)
            if self._seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(self._seed)
        return self._generator


def next_tokens(logits: torch.Tensor, samplers: list[Sampler]) -> list[int]:
    """logits: [B, V]; one token per row."""
    tokens: list[int] = logits.argmax(-1).tolist()
    for row, sampler in enumerate(samplers):
        if not sampler.greedy:
            tokens[row] = sampler.sample(logits[row])
    return tokens
