"""The running batch: prefill of joiners, one batched decode step, and rows leaving.

Owned by the decode worker thread alone. Rows are right-aligned (see kvcache.py); ``mask`` marks
the real columns of each row and ``positions`` is each row's next position id, so rows of
different lengths decode together exactly as they would alone.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from cortex_transformers.kvcache import (
    cache_length,
    concat_right_aligned,
    new_cache,
    select_rows,
)
from cortex_transformers.sequence import Sequence


class DecodeBatch:
    def __init__(self, model: PreTrainedModel, device: torch.device) -> None:
        self._model = model
        self._device = device
        self._clear()

    def _clear(self) -> None:
        self.rows: list[Sequence] = []
        self._cache = new_cache()
        self._mask = torch.zeros(0, 0, dtype=torch.long, device=self._device)  # [B, L]
        self._positions = torch.zeros(0, dtype=torch.long, device=self._device)  # [B]
        self._last = torch.zeros(0, dtype=torch.long, device=self._device)  # [B], next input token
        self._padded = False

    def prefill(self, tokens: list[int], cache: Cache | None = None) -> tuple[Cache, torch.Tensor]:
        """Run (the next chunk of) a new sequence's prompt alone, extending ``cache`` (None: a
        fresh one); returns the cache and the chunk's last logits [V].

        Prefilling alone avoids padded query rows; positions continue from the cache length, so
        a prompt prefilled in chunks equals one prefilled whole. The sequence joins (``join``)
        once its first token is known.
        """
        ids = torch.tensor([tokens], dtype=torch.long, device=self._device)  # [1, S]
        cache = cache if cache is not None else new_cache()
        out = self._model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        return cache, out.logits[0, -1]

    def join(self, seq: Sequence, cache: Cache, token: int) -> None:
        """Add a prefilled sequence whose next input is ``token``."""
        n = len(seq.prompt)
        if self.rows:
            self._cache = concat_right_aligned(self._cache, cache)
        else:
            self._cache = cache
        length = cache_length(self._cache)
        mask = torch.zeros(len(self.rows) + 1, length, dtype=torch.long, device=self._device)
        mask[:-1, length - self._mask.shape[1] :] = self._mask
        mask[-1, length - n :] = 1
        self._mask = mask
        new = torch.tensor([n], dtype=torch.long, device=self._device)
        self._positions = torch.cat([self._positions, new])
        self._last = torch.cat([self._last, new.new_tensor([token])])
        self.rows.append(seq)
        self._padded = bool((mask == 0).any())

    def step(self) -> torch.Tensor:
        """Decode one token for every row; returns logits [B, V]."""
        ones = self._mask.new_ones(len(self.rows), 1)
        self._mask = torch.cat([self._mask, ones], dim=1)
        out = self._model(
            input_ids=self._last[:, None],  # [B, 1]
            attention_mask=self._mask if self._padded else None,
            position_ids=self._positions[:, None],  # [B, 1]
            cache=self._cache,
            use_cache=True,
        )
        self._positions += 1
        logits: torch.Tensor = out.logits[:, -1]  # [B, V]
        return logits

    def advance(self, tokens: list[int]) -> None:
        """Set each row's next input token (after ``step``)."""
        self._last = torch.tensor(tokens, dtype=torch.long, device=self._device)

    def keep(self, keep: list[int]) -> None:
        """Keep only the rows at these indices (others finished or were cancelled)."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._clear()
            return
        index = torch.tensor(keep, dtype=torch.long, device=self._device)
        mask = self._mask[index]
        used = mask.any(dim=0).nonzero()
        drop = int(used[0]) if len(used) else 0
        select_rows(self._cache, index, drop)
        self._mask = mask[:, drop:]
        self._positions = self._positions[index]
        self._last = self._last[index]
        self._padded = bool((self._mask == 0).any())
