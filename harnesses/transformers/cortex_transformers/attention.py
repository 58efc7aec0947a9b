"""SDPA for the paged engine on CPU: grouped-query attention without repeating key/value heads.

A prefill chunk over a cached prefix always carries a mask, and with a mask transformers' SDPA
path copies every key and value head ``num_key_value_groups`` times (``repeat_kv``) before the
call, because CUDA's fused kernels cannot take ``enable_gqa`` with a mask. PyTorch's CPU kernel
can: on a later agent turn of SmolLM2 (60 new tokens over 2200 cached, 3 KV heads for 9 query
heads) the copies were 40-70 ms of a ~0.43 s forward pass. ``cortex_sdpa`` passes ``enable_gqa``
for masked multi-token queries on the CPU, folds the groups into the query for masked decode
steps (``_decode``, in compiled steps too), and hands every other call (CUDA, unmasked calls,
biased attention) to transformers' own SDPA function unchanged; its masks are
transformers' SDPA masks, so everything that holds for "sdpa" holds for it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from cortex_transformers import cpu_kernels
from cortex_transformers.kvcache import KVPool, gather

NAME = "cortex_sdpa"
SLOTS = "cortex_slots"  # the forward keyword that carries a decode step's slots to attention


def cortex_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query: [B, H, Q, D]; key, value: [B, H_kv, K, D]; returns [B, Q, H, D].

    With ``cortex_slots`` (a compiled decode step whose cache hands over the whole pool, see
    ``paged_decode_usable``): key, value are the pool ``[1, H_kv, slots, D]`` and
    ``cortex_slots`` ``[B, W]`` the slots each row attends to."""
    slots = kwargs.pop(SLOTS, None)
    if slots is not None:
        return _paged_decode(module, query, key, value, attention_mask, slots, scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    if not (query.device.type == "cpu" and groups > 1 and plain and attention_mask is not None):
        return sdpa_attention_forward(  # type: ignore[no-any-return]
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    if query.shape[2] == 1:
        return _decode(query, key, value, attention_mask, groups, dropout, scaling), None
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        enable_gqa=True,
    )  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


def _decode(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    groups: int,
    dropout: float,
    scaling: float | None,
) -> torch.Tensor:
    """One query a row: each key/value head's query heads become that head's queries
    ([B, H, 1, D] -> [B, H_kv, groups, D]), so every key is read once per key/value head and
    nothing is copied. transformers does the same in the same ops, but in eager mode only:
    under torch.compile it copies every key and value head ``groups`` times first. SmolLM2
    int4, compiled, one row: the copies (fused with the KV gather) took 1.4 ms of a ~20 ms step
    at 100 keys, and folding took the step at 2,500 keys from ~90 to ~50 ms."""
    b, heads, _, d = query.shape
    packed = query.reshape(b, heads // groups, groups, d)
    if mask.shape[1] != 1:  # a mask per head: per group of queries too
        mask = mask.reshape(b, heads // groups, groups, -1)
    out = torch.nn.functional.scaled_dot_product_attention(
        packed, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling
    )
    return out.reshape(b, heads, 1, -1).transpose(1, 2).contiguous()  # [B, 1, H, D]


def _paged_decode(
    module: torch.nn.Module,
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    slots: torch.Tensor,
    scaling: float | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """One query a row, attending to its slots straight from the pool (paged_decode.cpp): no
    gathered copy of the keys and values, which at 2,500 tokens of context was most of a
    compiled SmolLM2 step. A mask of another form than ``[B, 1, 1, W]`` booleans (none of
    the models served so far makes one) takes the gathered path."""
    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    if (mask is not None and (mask.dtype != torch.bool or mask.shape[1:3] != (1, 1))) or not plain:
        keys, values = gather(keys[0], slots), gather(values[0], slots)
        return cortex_sdpa(module, query, keys, values, mask, 0.0, scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out: torch.Tensor = torch.ops.cortex_attention.paged_decode(
        query[:, :, 0].contiguous(),  # [B, H, D]
        keys[0],
        values[0],
        slots.contiguous(),
        None if mask is None else mask[:, 0, 0].contiguous(),  # [B, W]
        scale,
    )
    return out[:, None], None  # [B, 1, H, D]


def paged_decode_usable(model: PreTrainedModel, pool: KVPool) -> bool:
    """Whether ``model``'s decode steps can read their keys and values in place from
    ``pool`` (``cortex_slots``): cortex_sdpa, float32 keys on the CPU, heads the kernel
    takes, and cortex's CPU kernels built here."""
    keys = pool.keys[0]
    heads = model.config.get_text_config().num_attention_heads
    return (
        model.config.get_text_config()._attn_implementation == NAME
        and keys.device.type == "cpu"
        and keys.dtype == torch.float32
        and keys.shape[-1] in (16, 32, 64, 128)
        and heads % keys.shape[0] == 0
        and heads // keys.shape[0] <= 8
        and cpu_kernels.loaded()
    )


AttentionInterface.register(NAME, cortex_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_cortex_sdpa(model: PreTrainedModel) -> None:
    """Switch a CPU model that runs transformers' SDPA to ``cortex_sdpa``."""
    if model.config.get_text_config()._attn_implementation == "sdpa":
        model.set_attn_implementation(NAME)
