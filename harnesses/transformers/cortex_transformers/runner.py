"""Forward passes over the paged KV pool: a prefill chunk of one sequence, a decode step of many.

Owned by the decode worker thread alone. Each pass turns block tables into slot indices
(kvcache.py) and passes explicit position ids, so a sequence decodes exactly as it would alone,
a prompt prefilled in chunks equals one prefilled whole, and a prefix whose KV came from the
cache equals one computed now. Decode rows are right-aligned (each row's newest token in the last
column) so column distances are token distances, as sliding-window masks assume.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from cortex_transformers.block_manager import BlockManager, BlockTable
from cortex_transformers.generation import Generation
from cortex_transformers.kvcache import KVPool


class ModelRunner:
    def __init__(
        self, model: PreTrainedModel, pool: KVPool, blocks: BlockManager, device: torch.device
    ) -> None:
        self._model = model
        self._pool = pool
        self._blocks = blocks
        self._device = device
        self._offsets = torch.arange(blocks.block_size, device=device)

    def prefill(self, seq: Generation, count: int) -> torch.Tensor:
        """Compute the KV of ``seq``'s next ``count`` tokens (its table already holds them);
        returns the logits after the last one [V]."""
        start, end = seq.computed, seq.computed + count
        slots = self._slots(seq.table, end)
        cache = self._pool.view(slots[None, start:end], slots[None, :end], start)
        out = self._model(
            input_ids=torch.tensor([seq.tokens[start:end]], device=self._device),  # [1, S]
            position_ids=torch.arange(start, end, device=self._device)[None],  # [1, S]
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._written(seq, end)
        logits: torch.Tensor = out.logits[0, -1]
        return logits

    def decode(self, rows: list[Generation]) -> torch.Tensor:
        """One token for every row: each row's last token goes in (its table has room for it);
        returns logits [B, V]."""
        lengths = [len(seq.tokens) for seq in rows]
        width = max(lengths)
        read = torch.zeros(len(rows), width, dtype=torch.long, device=self._device)  # [B, W]
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=self._device)  # [B, W]
        for i, (seq, n) in enumerate(zip(rows, lengths, strict=True)):
            read[i, width - n :] = self._slots(seq.table, n)
            mask[i, width - n :] = 1
        out = self._model(
            input_ids=torch.tensor([[seq.tokens[-1]] for seq in rows], device=self._device),
            attention_mask=mask if min(lengths) < width else None,
            position_ids=torch.tensor([[n - 1] for n in lengths], device=self._device),  # [B, 1]
            cache=self._pool.view(read[:, -1:], read, width - 1),
            use_cache=True,
        )
        for seq, n in zip(rows, lengths, strict=True):
            self._written(seq, n)
        logits: torch.Tensor = out.logits[:, -1]
        return logits

    def _slots(self, table: BlockTable, count: int) -> torch.Tensor:
        """Pool slots of the first ``count`` tokens of ``table`` [count]."""
        blocks = torch.tensor(table.blocks, device=self._device)
        slots = blocks[:, None] * self._blocks.block_size + self._offsets
        return slots.reshape(-1)[:count]

    def _written(self, seq: Generation, count: int) -> None:
        seq.computed = count
        self._blocks.register(seq.table, seq.tokens, count)
