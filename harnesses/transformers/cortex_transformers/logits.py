"""From one step's logits to each row's next token: what the request asked for, vectorised.

Order, per step, for the rows that need each stage (rows that need none pay nothing, so an
unconstrained greedy request is token-identical to one before these stages existed):
1. log-probabilities of the raw logits (OpenAI's ``logprobs`` / ``top_logprobs``; vLLM's default
   too: the model's distribution, before penalties, temperature or a grammar);
2. repetition penalty (over prompt and reply, as HF and vLLM), frequency and presence penalties
   (over the reply, as OpenAI), logit bias;
3. the grammar mask (guide.py): one bitmask for the batch, disallowed tokens to -inf;
4. a spent thinking budget (thinking.py): every token but the closing tag to -inf;
5. sampling (sampling.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from cortex.neuron.constraints import TokenLogprob
from cortex_transformers.sampling import Sampler, next_tokens

if TYPE_CHECKING:
    from cortex_transformers.generation import Generation

Picked = tuple[int, TokenLogprob | None]
"""A row's next token, with its log-probability when the request asked for it."""


def choose(logits: torch.Tensor, seqs: list[Generation]) -> list[Picked]:
    """logits: [B, V], one row per sequence of ``seqs``; returns each row's token."""
    samplers = [seq.sampler for seq in seqs]
    wants_logprobs = [i for i, s in enumerate(samplers) if s.logprobs is not None]
    raw = logits[wants_logprobs].float().log_softmax(-1) if wants_logprobs else None
    edited = [i for i, seq in enumerate(seqs) if _edits(seq)]
    if edited:
        logits = logits.to(torch.float32, copy=True)  # the caller keeps the model's logits
        _penalise(logits, [seqs[i] for i in edited], edited)
        _mask(logits, [seqs[i] for i in edited], edited)
        _force(logits, [seqs[i] for i in edited], edited)
    tokens = next_tokens(logits, samplers)
    picked: list[Picked] = [(token, None) for token in tokens]
    if raw is not None:
        for row, i in enumerate(wants_logprobs):
            picked[i] = (tokens[i], seqs[i].describe(raw[row], tokens[i]))
    return picked


def _edits(seq: Generation) -> bool:
    sampler = seq.sampler
    masked = seq.guide is not None and seq.guide.masks
    forced = seq.think is not None and seq.think.forced is not None
    return masked or forced or sampler.penalised or bool(sampler.logit_bias)


def _penalise(logits: torch.Tensor, seqs: list[Generation], rows: list[int]) -> None:
    """Penalties and logit bias for the rows that ask, one tensor op per kind for the batch."""
    penalised = [(seq, row) for seq, row in zip(seqs, rows, strict=True) if seq.sampler.penalised]
    if penalised:
        vocab = logits.shape[-1]
        for seq, _ in penalised:
            _ensure_state(seq.sampler, seq, vocab)
        index = torch.tensor([row for _, row in penalised], device=logits.device)
        samplers = [seq.sampler for seq, _ in penalised]
        scores = logits[index]  # [P, V], a copy
        none = torch.zeros(vocab, dtype=torch.float32)
        if any(s.repetition != 1.0 for s in samplers):
            seen = torch.stack([s.seen if s.seen is not None else none.bool() for s in samplers])
            p = torch.tensor([s.repetition for s in samplers], device=logits.device)[:, None]
            seen = seen.to(logits.device)
            scores = torch.where(seen, torch.where(scores > 0, scores / p, scores * p), scores)
        if any(s.frequency or s.presence for s in samplers):
            counts = torch.stack([s.counts if s.counts is not None else none for s in samplers])
            counts = counts.to(logits.device)
            frequency = torch.tensor([s.frequency for s in samplers], device=logits.device)
            presence = torch.tensor([s.presence for s in samplers], device=logits.device)
            scores -= frequency[:, None] * counts + presence[:, None] * (counts > 0).float()
        logits[index] = scores
    biased = [(seq.sampler.logit_bias, row) for seq, row in zip(seqs, rows, strict=True)]
    if any(bias for bias, _ in biased):
        at_rows = [row for bias, row in biased for _ in bias]
        at_tokens = [token for bias, _ in biased for token in bias]
        values = [value for bias, _ in biased for value in bias.values()]
        where = (torch.tensor(at_rows), torch.tensor(at_tokens))
        logits.index_put_(where, torch.tensor(values, device=logits.device), accumulate=True)


def _ensure_state(sampler: Sampler, seq: Generation, vocab: int) -> None:
    """The penalty state of a sequence's first penalised step: counts of its reply so far,
    and which tokens its prompt and reply hold. Kept up to date by ``Sampler.observe``."""
    if sampler.counts is None and (sampler.frequency or sampler.presence):
        reply = seq.tokens[len(seq.prompt) :]
        sampler.counts = torch.zeros(vocab, dtype=torch.float32)
        if reply:
            sampler.counts.index_add_(0, torch.tensor(reply), torch.ones(len(reply)))
    if sampler.seen is None and sampler.repetition != 1.0:
        sampler.seen = torch.zeros(vocab, dtype=torch.bool)
        sampler.seen[torch.tensor(seq.tokens)] = True


def _mask(logits: torch.Tensor, seqs: list[Generation], rows: list[int]) -> None:
    """One bitmask for every masked row of the batch; disallowed tokens become -inf."""
    masked = [
        (seq, row) for seq, row in zip(seqs, rows, strict=True) if seq.guide and seq.guide.masks
    ]
    if not masked:
        return
    vocab = logits.shape[-1]
    bitmask = np.zeros((len(masked), (vocab + 31) // 32), dtype=np.int32)
    for i, (seq, _) in enumerate(masked):
        assert seq.guide is not None
        seq.guide.fill(bitmask, i)
    allowed = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, :vocab]
    index = torch.tensor([row for _, row in masked], device=logits.device)
    block = torch.from_numpy(allowed).to(logits.device) == 0  # [M, V] disallowed
    logits[index] = logits[index].masked_fill(block, float("-inf"))


def _force(logits: torch.Tensor, seqs: list[Generation], rows: list[int]) -> None:
    """Rows whose thinking budget is spent can take only the closing tag."""
    for seq, row in zip(seqs, rows, strict=True):
        if seq.think is not None and (token := seq.think.forced) is not None:
            keep = logits[row, token].clone()
            logits[row] = float("-inf")
            logits[row, token] = keep if torch.isfinite(keep) else 0.0
