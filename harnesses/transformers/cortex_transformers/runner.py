"""Forward passes over the paged KV pool: a prefill chunk of one sequence, a decode step of many.

Owned by the decode worker thread alone. Each pass turns block tables into slot indices
(kvcache.py) and passes explicit position ids, so a sequence decodes exactly as it would alone,
a prompt prefilled in chunks equals one prefilled whole, and a prefix whose KV came from the
cache equals one computed now. Decode rows are right-aligned (each row's newest token in the last
column) so column distances are token distances, as sliding-window masks assume.

Short prefill chunks of several sequences share one forward pass (``joins``): their tokens are
packed into one row and a block-diagonal causal mask keeps each sequence to its own keys. A short
prompt's forward costs about what reading the weights costs, so sixteen prompts arriving together
pay it once instead of sixteen times. Packing is bounded by the attention it wastes (every query
is scored against every packed key, then masked), and is used only where a prepared boolean mask
is honoured: SDPA attention, no sliding-window layers.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from cortex_transformers import attention
from cortex_transformers.block_manager import BlockManager, BlockTable
from cortex_transformers.compiled import CompiledDecode
from cortex_transformers.cpu_quant import float32_prefill, product_mode
from cortex_transformers.generation import Generation
from cortex_transformers.kvcache import KVPool

Chunk = tuple[Generation, int]
"""A sequence and how many of its next tokens to prefill (its table already holds them)."""

WASTE_FREE = 32 * 1024
"""Query-key pairs a packed pass may score for nothing: 8 prompts of ~22 tokens (on one CPU core
~20 ms for the 64M demo model, what one more forward pass of a short prompt costs in weight
reads). Long chunks are compute-bound and gain nothing from sharing a pass, so the bound is
absolute: two 150-token chunks over 2.5k cached tokens each would score 750k pairs for nothing."""


class ModelRunner:
    def __init__(
        self,
        model: PreTrainedModel,
        pool: KVPool,
        blocks: BlockManager,
        device: torch.device,
        compiled: CompiledDecode | None = None,
    ) -> None:
        self._model = model
        self._compiled = compiled  # decode steps that fit its buckets run through it
        self._pool = pool
        self._blocks = blocks
        self._device = device
        self._offsets = torch.arange(blocks.block_size, device=device)
        self._columns = torch.arange(blocks.num_blocks * blocks.block_size, device=device)
        self.packs = _honours_prepared_masks(model)
        self._products = product_mode(model)  # int4/int8: prefill passes multiply in float32

    def joins(self, group: list[Chunk], chunk: Chunk) -> bool:
        """Whether ``chunk`` may share ``group``'s forward pass: the query-key pairs the pass
        would score for nothing stay within WASTE_FREE."""
        if not self.packs:
            return False
        queries = keys = useful = 0
        for seq, count in (*group, chunk):
            end = seq.computed + count
            queries, keys, useful = queries + count, keys + end, useful + count * end
        return queries * keys - useful <= WASTE_FREE

    def prefill(self, chunks: list[Chunk]) -> torch.Tensor:
        """Compute the KV of each chunk's tokens in one forward pass; returns the logits after
        each chunk's last token [P, V]. A model whose attention ignores prepared masks runs
        them one pass each."""
        with float32_prefill(self._products):
            return self._prefill(chunks)

    def _prefill(self, chunks: list[Chunk]) -> torch.Tensor:
        if len(chunks) == 1 or not self.packs:
            return torch.stack([self._prefill_one(seq, count) for seq, count in chunks])
        ids: list[int] = []
        write, read, query_seq, query_pos, key_seq, key_pos, last = [], [], [], [], [], [], []
        for i, (seq, count) in enumerate(chunks):
            start, end = seq.computed, seq.computed + count
            slots = self._slots(seq.table, end)
            ids += seq.tokens[start:end]
            write.append(slots[start:end])
            read.append(slots)
            query_seq.append(torch.full((count,), i, device=self._device))
            query_pos.append(torch.arange(start, end, device=self._device))
            key_seq.append(torch.full((end,), i, device=self._device))
            key_pos.append(torch.arange(end, device=self._device))
            last.append(len(ids) - 1)
        q_seq, q_pos = torch.cat(query_seq), torch.cat(query_pos)  # [Q]
        k_seq, k_pos = torch.cat(key_seq), torch.cat(key_pos)  # [K]
        # mask: [1, 1, Q, K], True where a query may attend: its own sequence, not its future.
        mask = (q_seq[:, None] == k_seq[None, :]) & (k_pos[None, :] <= q_pos[:, None])
        keys = torch.cat(read)
        out = self._model(
            input_ids=torch.tensor([ids], device=self._device),  # [1, Q]
            position_ids=q_pos[None],  # [1, Q]
            attention_mask=mask[None, None],
            cache=self._pool.view(torch.cat(write)[None], keys[None]),
            use_cache=True,
            logits_to_keep=torch.tensor(last, device=self._device),
        )
        for seq, count in chunks:
            self._written(seq, seq.computed + count)
        logits: torch.Tensor = out.logits[0]  # [P, V]
        return logits

    def _prefill_one(self, seq: Generation, count: int) -> torch.Tensor:
        """One chunk alone: the model builds its own masks (any attention, sliding windows)."""
        start, end = seq.computed, seq.computed + count
        slots = self._slots(seq.table, end)
        span = seq.table.span(self._blocks.block_size, end)
        cache = self._pool.view(slots[None, start:end], slots[None, :end], span)
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
        returns logits [B, V]. Through the compiled step when there is one and the rows fit
        its buckets."""
        lengths = [len(seq.tokens) for seq in rows]
        width = max(lengths)
        read, valid = self._decode_slots(rows, lengths, width)  # [B, W] each
        last, positions = [seq.tokens[-1] for seq in rows], [n - 1 for n in lengths]
        if self._compiled is not None and self._compiled.bucket(len(rows)) is not None:
            logits = self._compiled.step(last, positions, read, valid)
        else:
            span = rows[0].table.span(self._blocks.block_size, width) if len(rows) == 1 else None
            out = self._model(
                input_ids=torch.tensor(last, device=self._device)[:, None],  # [B, 1]
                attention_mask=valid.long() if min(lengths) < width else None,
                position_ids=torch.tensor(positions, device=self._device)[:, None],  # [B, 1]
                cache=self._pool.view(read[:, -1:], read, span),
                use_cache=True,
            )
            logits = out.logits[:, -1]
        for seq, n in zip(rows, lengths, strict=True):
            self._written(seq, n)
        return logits

    def _decode_slots(
        self, rows: list[Generation], lengths: list[int], width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The slots each row reads, right-aligned, and which columns hold a token ([B, W]
        each; padding columns read slot 0). A fixed number of tensor ops for the whole batch:
        one tensor of the rows' block tables, then column -> token -> block -> slot."""
        size = self._blocks.block_size
        count = -(-width // size)  # blocks of the longest row
        tables = torch.tensor(
            [(seq.table.blocks + [0] * count)[:count] for seq in rows], device=self._device
        )  # [B, count]
        first = torch.tensor(lengths, device=self._device)[:, None] - width  # [B, 1], <= 0
        token = self._columns[:width] + first  # [B, W]: each column's token index in its row
        valid = token >= 0
        token = token.clamp(min=0)
        slots = tables.gather(1, token // size) * size + token % size
        return slots.masked_fill(~valid, 0), valid

    def _slots(self, table: BlockTable, count: int) -> torch.Tensor:
        """Pool slots of the first ``count`` tokens of ``table`` [count]."""
        blocks = torch.tensor(table.blocks, device=self._device)
        slots = blocks[:, None] * self._blocks.block_size + self._offsets
        return slots.reshape(-1)[:count]

    def _written(self, seq: Generation, count: int) -> None:
        seq.computed = count
        self._blocks.register(seq.table, seq.tokens, count)


def _honours_prepared_masks(model: PreTrainedModel) -> bool:
    """Whether a prepared 4-D boolean mask reaches every attention layer as given: SDPA (ours
    included) reads it as is (eager wants an additive float mask, flash-attention ignores it),
    and a model with sliding-window layers would need a second mask for them."""
    config = model.config.get_text_config()
    if getattr(config, "_attn_implementation", None) not in ("sdpa", attention.NAME):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return all(kind == "full_attention" for kind in layer_types)
    return getattr(config, "sliding_window", None) is None
