"""A decode step through ``torch.compile``: the per-model ``compiled_decode`` opt-in.

An eager decode step of a small model is mostly per-op overhead (transformers' Python and a few
thousand small aten calls: ~27 ms of SmolLM2's ~90 ms on one core, bench/results/
2026-12-07-decode-profile.md). Inductor fuses the step into one graph; with ``freezing`` it also
prepacks the weights, which is what fp32 GEMMs of 2-16 rows need on this CPU.

Shapes: a graph is specialised on the batch size and dynamic in the width (the keys a row
attends to grow by one each step; ``PagedLayer.get_seq_length`` reads the width off a tensor's
shape so it stays symbolic). Batches are padded up to a bucket (``buckets``) so a few graphs
serve every batch size; a padding row decodes token 0 at position 0 and writes its K/V into the
pool's scratch slot, attending to nothing else. A graph is compiled on a bucket's first step
(``warm`` compiles them all ahead, at load). Prefill and packed chunks stay eager.

Numerics: the compiled step's logits differ from eager's by up to ~2e-4 (fused reductions sum
in another order), so greedy output can differ from ``generate`` where two logits are that
close; token-identical output is promised for the eager default only.

Owned by the decode worker thread (compilation included); ``warm`` runs on the loading thread
before the worker sees its first request.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch._dynamo.types import GuardFilterEntry
from transformers import PreTrainedModel

from cortex_transformers.attention import SLOTS, paged_decode_usable
from cortex_transformers.cpu_quant import CPU_QUANTIZATIONS
from cortex_transformers.kvcache import KVPool

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16)


def buckets(max_batch: int) -> tuple[int, ...]:
    """The padded batch sizes for a model that decodes at most ``max_batch`` rows a step:
    the ``BUCKETS`` below it and ``max_batch`` itself when it is no larger than the last.
    Steps of more rows than the largest bucket run eager."""
    below = tuple(b for b in BUCKETS if b < max_batch)
    return (*below, max_batch) if max_batch <= BUCKETS[-1] else below


class CompiledDecode:
    """The model's forward compiled for decode steps of padded batches."""

    def __init__(self, model: PreTrainedModel, pool: KVPool, max_batch: int) -> None:
        self.buckets = buckets(max_batch)
        self._pool = pool
        self._device = pool.keys[0].device
        # Attention reads each row's slots from the pool (paged_decode.cpp) where it can:
        # a gathered copy of the keys and values was most of a step at 2,500 tokens.
        self.in_place = paged_decode_usable(model, pool) and _attention_takes_slots(model, pool)

        def forward(**inputs: Any) -> Any:
            return model.forward(**inputs)

        # freezing: weights become constants, prepacked for the CPU's GEMM (needs no_grad or
        # inference mode, which the worker runs under). fullgraph: one frame, so every guard
        # is on ``inputs`` or the model (see ``_input_guards``); a graph break fails the load.
        # isolate_recompiles: this model's graphs alone, never another model's of the class.
        # recompile_limit: one graph per bucket; past it the step raises instead of running
        # eager without a word.
        # torch 2.13's overloads do not declare isolate_recompiles and recompile_limit yet
        self._forward = torch.compile(  # type: ignore[call-overload]
            forward,
            dynamic=False,
            fullgraph=True,
            isolate_recompiles=True,
            recompile_limit=len(self.buckets) + 1,
            options={"freezing": True, "guard_filter_fn": _input_guards},
        )

    def bucket(self, rows: int) -> int | None:
        """The padded size for ``rows`` rows, None when more rows than the largest bucket."""
        return next((b for b in self.buckets if b >= rows), None)

    def step(
        self, ids: list[int], positions: list[int], read: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """One decode step of B rows padded to their bucket; returns logits [B, V].

        ids, positions: each row's last token and its position; read, valid: [B, W] the slots
        each row reads, right-aligned (the last column is the slot the new token writes), and
        which columns hold a token.
        """
        rows, width = read.shape
        size = self.bucket(rows)
        if size is None:
            raise ValueError(f"{rows} rows exceed the largest bucket {self.buckets[-1]}")
        pad = size - rows
        if pad:
            scratch = torch.full((pad, width), self._pool.scratch, device=self._device)
            alone = torch.zeros((pad, width), dtype=torch.bool, device=self._device)
            alone[:, -1] = True  # a padding row attends to its own token only: no NaN rows
            read, valid = torch.cat([read, scratch]), torch.cat([valid, alone])
            ids, positions = ids + [0] * pad, positions + [0] * pad
        mask = valid.long()  # always a mask, so one graph serves equal and ragged rows
        # The width grows every step: dynamic, never a constant to recompile for.
        torch._dynamo.mark_dynamic(read, 1)
        torch._dynamo.mark_dynamic(mask, 1)
        # write: [S, 1] with strides of its own (a column of ``read`` has W's as a stride)
        write = read[:, -1:].clone(memory_format=torch.contiguous_format)
        out = self._forward(
            input_ids=torch.tensor(ids, device=self._device)[:, None],  # [S, 1]
            attention_mask=mask,  # [S, W]
            position_ids=torch.tensor(positions, device=self._device)[:, None],  # [S, 1]
            cache=self._pool.view(write, read, in_place=self.in_place),
            use_cache=True,
            **({SLOTS: read} if self.in_place else {}),
        )
        logits: torch.Tensor = out.logits[:rows, -1]
        return logits

    def warm(self) -> None:
        """Compile every bucket's graph now (minutes for a 135M model on one CPU core)."""
        scratch = self._pool.scratch
        with torch.inference_mode():
            for size in self.buckets:
                read = torch.full((size, 2), scratch, device=self._device)
                valid = torch.ones((size, 2), dtype=torch.bool, device=self._device)
                self.step([0] * size, [1] * size, read, valid)


def _attention_takes_slots(model: PreTrainedModel, pool: KVPool) -> bool:
    """Whether ``cortex_slots`` reaches ``model``'s attention: transformers' models hand a
    forward's extra keywords on to it, but one that did not would be handed the whole pool as
    its keys. One eager step over the scratch slot, in place and gathered: the first attention
    layer's outputs must agree (the logits of a small random model barely show a difference)."""
    attention = next((m for m in model.modules() if hasattr(m, "num_key_value_groups")), None)
    if attention is None:
        return False
    device = pool.keys[0].device
    read = torch.full((1, 2), pool.scratch, device=device)
    # A token from mid-vocabulary: a padding token's embedding may be zeros, and so its K/V.
    token = torch.full((1, 1), model.config.get_text_config().vocab_size // 2, device=device)
    outputs: list[torch.Tensor] = []

    def step(in_place: bool) -> None:
        model(
            input_ids=token,
            attention_mask=torch.ones((1, 2), dtype=torch.long, device=device),
            position_ids=torch.ones((1, 1), dtype=torch.long, device=device),
            cache=pool.view(read[:, -1:].clone(), read, in_place=in_place),
            use_cache=True,
            **({SLOTS: read} if in_place else {}),
        )

    hook = attention.register_forward_hook(lambda _m, _a, out: outputs.append(out[0].clone()))
    try:
        with torch.inference_mode():
            step(True)
            step(False)
    except Exception:  # any failure means: gather, as before
        log.warning("attention reads a gathered copy: cortex_slots failed", exc_info=True)
        return False
    finally:
        hook.remove()
    in_place, gathered = outputs
    agree = bool((in_place - gathered).norm() <= 1e-4 * gathered.norm()) and bool(gathered.any())
    if not agree:
        log.warning(
            "attention reads a gathered copy: %s ignores cortex_slots", type(model).__name__
        )
    return agree


def _input_guards(entries: list[GuardFilterEntry]) -> list[bool]:
    """Keep a graph's guards on the step's inputs (shapes, the cache's layout) and torch's
    global state; drop those on the model, its modules and transformers' globals.

    SmolLM2's graph had ~8,700 guards, all but ~360 on the model, and checking them before
    every step cost ~3 ms of its ~23 (bench/results/2026-12-07-cpu-quantization.md). Dropping
    them is safe here because the graphs are this model's alone (``isolate_recompiles``: with
    shared entries an int4 model of a class ran an fp32 one's graph) and nothing changes a
    model's modules or weights once it is loaded.
    """
    return [not e.is_global and (e.name == "" or e.name.startswith("inputs")) for e in entries]


def compiled_decode_refusal(device: str, quantization: str, task: str) -> str | None:
    """Why ``compiled_decode`` cannot be honoured for this load, or None when it can."""
    if task != "generate":
        return f'compiled_decode applies to task "generate" models only, not {task!r}'
    if device != "cpu":
        return f"compiled_decode is checked on the CPU only so far, not on {device}"
    if quantization not in ("none", *CPU_QUANTIZATIONS):  # bitsandbytes' layers: unchecked
        return (
            "compiled_decode needs unquantised or int8/int4 weights, "
            f"not quantization {quantization!r}"
        )
    return None
