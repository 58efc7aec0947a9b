"""cortex_sdpa: the same attention as transformers' SDPA, without repeating key/value heads."""

from __future__ import annotations

import pytest
import torch
from cortex_transformers import attention
from cortex_transformers.harness import TransformersModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward


class _Module(torch.nn.Module):
    """What the attention functions read off a model's attention layer."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize(("heads", "kv_heads", "queries"), [(9, 3, 60), (8, 4, 1), (4, 4, 7)])
def test_cortex_sdpa_equals_transformers_sdpa(heads: int, kv_heads: int, queries: int) -> None:
    torch.manual_seed(0)
    past = 40
    query = torch.randn(2, heads, queries, 16)
    key, value = torch.randn(2, 2, kv_heads, past + queries, 16).unbind(0)
    # A prefill chunk over a cached prefix: causal with an offset, one padded column.
    q_pos = torch.arange(past, past + queries)[:, None]
    mask = (torch.arange(past + queries)[None, :] <= q_pos)[None, None].repeat(2, 1, 1, 1)
    mask[1, :, :, 0] = False
    module = _Module(heads // kv_heads)
    ours, _ = attention.cortex_sdpa(module, query, key, value, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    torch.testing.assert_close(ours, theirs)


def test_a_cpu_model_runs_cortex_sdpa(demo: TransformersModel) -> None:
    assert demo._model is not None
    assert demo._model.config._attn_implementation == attention.NAME


@pytest.mark.parametrize("mask_heads", [1, 8])
def test_a_compiled_decode_step_attends_as_eager_does(mask_heads: int) -> None:
    """Under torch.compile transformers copies key/value heads for a decode step; cortex_sdpa
    folds the query heads instead, there as in eager mode, with the same result."""
    torch.manual_seed(0)
    query = torch.randn(2, 8, 1, 16)
    key, value = torch.randn(2, 2, 2, 30, 16).unbind(0)
    mask = torch.ones(2, mask_heads, 1, 30, dtype=torch.bool)
    mask[1, :, :, :5] = False  # a shorter row, right-aligned
    module = _Module(4)
    compiled = torch.compile(attention.cortex_sdpa, fullgraph=True, dynamic=False)
    ours, _ = compiled(module, query, key, value, mask, scaling=0.25)
    theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    torch.testing.assert_close(ours, theirs)
