"""SDPA for the paged engine on CPU: grouped-query attention without repeating key/value heads.

A prefill chunk over a cached prefix always carries a mask, and with a mask transformers' SDPA
path copies every key and value head ``num_key_value_groups`` times (``repeat_kv``) before the
call, because CUDA's fused kernels cannot take ``enable_gqa`` with a mask. PyTorch's CPU kernel
can: on a later agent turn of SmolLM2 (60 new tokens over 2200 cached, 3 KV heads for 9 query
heads) the copies were 40-70 ms of a ~0.43 s forward pass. ``cortex_sdpa`` passes ``enable_gqa``
for masked multi-token queries on the CPU and hands every other call (CUDA, decode steps,
unmasked or biased attention) to transformers' own SDPA function unchanged; its masks are
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
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    # A decode step (one query) needs no copy either: transformers folds the groups into it.
    chunk = attention_mask is not None and query.shape[2] > 1
    if not (query.device.type == "cpu" and grouped and plain and chunk):
        return sdpa_attention_forward(  # type: ignore[no-any-return]
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        enable_gqa=True,
    )  # fmt: skip
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, cortex_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_cortex_sdpa(model: PreTrainedModel) -> None:
    """Switch a CPU model that runs transformers' SDPA to ``cortex_sdpa``."""
    if model.config.get_text_config()._attn_implementation == "sdpa":
        model.set_attn_implementation(NAME)
