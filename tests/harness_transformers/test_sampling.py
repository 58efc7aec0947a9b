"""Vectorised sampling: greedy rows, temperature, top-k, top-p and seeds, without a model."""

from __future__ import annotations

import math
from collections import Counter

import torch
from cortex_transformers.sampling import Sampler, next_tokens

from cortex.neuron.harness import SamplingParams

LOGITS = torch.tensor([0.0, math.log(3.0), -1.0, 2.0])  # softmax ~ [.07, .21, .03, .59]


def _params(**kw: object) -> SamplingParams:
    return SamplingParams(max_new_tokens=1, **kw)  # type: ignore[arg-type]


def _draws(params: SamplingParams, n: int, logits: torch.Tensor = LOGITS) -> list[int]:
    sampler = Sampler(params)
    return [next_tokens(logits[None], [sampler])[0] for _ in range(n)]


def test_greedy_and_subnormal_temperatures_take_the_argmax() -> None:
    for temperature in (0.0, 1.8e-39, 1e-6):
        assert set(_draws(_params(temperature=temperature, seed=1), 20)) == {3}


def test_temperature_one_follows_the_softmax() -> None:
    counts = Counter(_draws(_params(temperature=1.0, seed=3), 4000))
    expected = LOGITS.softmax(-1).tolist()
    for token, p in enumerate(expected):
        assert abs(counts[token] / 4000 - p) < 0.03, (token, counts)


def test_top_k_and_top_p_cut_the_tail() -> None:
    assert set(_draws(_params(temperature=1.0, top_k=2, seed=4), 300)) == {1, 3}
    # top_p 0.7: token 3 (0.59) then token 1 (0.21) reach it; the rest never appear.
    assert set(_draws(_params(temperature=1.0, top_p=0.7, seed=5), 300)) == {1, 3}
    assert set(_draws(_params(temperature=1.0, top_p=0.1, seed=6), 50)) == {3}


def test_a_seeded_row_samples_the_same_whatever_shares_the_batch() -> None:
    alone = _draws(_params(temperature=1.0, seed=11), 30)
    seeded = Sampler(_params(temperature=1.0, seed=11))
    others = [Sampler(_params(temperature=0.7, top_p=0.9)), Sampler(_params(temperature=0.0))]
    batch = LOGITS.repeat(3, 1)
    mixed = [next_tokens(batch, [others[0], seeded, others[1]])[1] for _ in range(30)]
    assert mixed == alone
    assert len(set(alone)) > 1


def test_unseeded_rows_differ() -> None:
    wide = torch.zeros(1000)
    assert _draws(_params(temperature=1.0), 8, wide) != _draws(_params(temperature=1.0), 8, wide)
