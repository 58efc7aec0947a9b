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

NAME = "cortex_sdpa"


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
    """query: [B, H, Q, D]; key, value: [B, H_kv, K, D]; returns [B, Q, H, D]."""
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


AttentionInterface.register(NAME, cortex_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_cortex_sdpa(model: PreTrainedModel) -> None:
    """Switch a CPU model that runs transformers' SDPA to ``cortex_sdpa``."""
    if model.config.get_text_config()._attn_implementation == "sdpa":
        model.set_attn_implementation(NAME)
