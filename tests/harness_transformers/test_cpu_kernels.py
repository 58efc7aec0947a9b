"""cortex's CPU kernel library: where it cannot run, PyTorch's kernels stay; and
paged_decode.cpp, a decode step's attention read in place from the KV pool, against PyTorch's
SDPA over the gathered keys and values."""

from __future__ import annotations

import pytest
import torch
from cortex_transformers import cpu_kernels
from cortex_transformers.attention import cortex_sdpa

needs_kernels = pytest.mark.skipif(
    not cpu_kernels.loaded(), reason="cortex's CPU kernels need AVX512-VNNI/VBMI and a C++ compiler"
)


def test_a_cpu_without_the_instructions_keeps_pytorchs_kernels(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: {"avx2", "fma"})
    with caplog.at_level("INFO"):
        assert not cpu_kernels._load_once.__wrapped__()
    assert "lacks avx512f" in caplog.text


def test_no_compiler_keeps_pytorchs_kernels(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert not cpu_kernels._load_once.__wrapped__()
    assert "no C++ compiler" in caplog.text


def _reference(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    slots: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """SDPA over each row's gathered keys and values, every query head against its group's."""
    groups = query.shape[1] // keys.shape[0]
    k = keys[:, slots].transpose(0, 1).repeat_interleave(groups, dim=1)  # [B, H, W, D]
    v = values[:, slots].transpose(0, 1).repeat_interleave(groups, dim=1)
    attend = None if mask is None else mask[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        query[:, :, None, :].double(), k.double(), v.double(), attn_mask=attend, scale=scale
    )
    return out[:, :, 0].float()


@needs_kernels
@pytest.mark.parametrize(
    ("rows", "kv_heads", "groups", "dim", "width"),
    [
        (1, 3, 3, 64, 1),  # SmolLM2's heads; a first step attends to itself only
        (1, 3, 3, 64, 37),  # a width that is no multiple of 16 (the exp's tail)
        (4, 3, 3, 64, 300),
        (2, 8, 4, 128, 129),  # Llama 3 / Qwen3 8B's heads
        (3, 2, 1, 64, 48),  # no grouping
        (2, 1, 8, 128, 20),
        (2, 2, 2, 16, 40),  # the tiny demo model's heads
        (2, 4, 1, 32, 17),
    ],
)
def test_paged_decode_equals_sdpa_over_the_gathered_keys(
    rows: int, kv_heads: int, groups: int, dim: int, width: int
) -> None:
    gen = torch.Generator().manual_seed(rows * 1000 + width)
    pool = 4 * width + 8
    keys = torch.randn(kv_heads, pool, dim, generator=gen)
    values = torch.randn(kv_heads, pool, dim, generator=gen)
    query = torch.randn(rows, kv_heads * groups, dim, generator=gen) * 3  # peaked weights too
    slots = torch.stack([torch.randperm(pool, generator=gen)[:width] for _ in range(rows)])
    mask = torch.rand(rows, width, generator=gen) > 0.3
    mask[:, -1] = True  # a row always sees its own new token
    scale = dim**-0.5
    for given in (mask, None):
        got = torch.ops.cortex_attention.paged_decode(query, keys, values, slots, given, scale)
        want = _reference(query, keys, values, slots, given, scale)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_paged_decode_refuses_what_it_cannot_do() -> None:
    keys = torch.zeros(2, 8, 96)
    with pytest.raises(RuntimeError, match="head_dim 16, 32, 64 or 128"):
        torch.ops.cortex_attention.paged_decode(
            torch.zeros(1, 2, 96), keys, keys, torch.zeros(1, 4, dtype=torch.long), None, 1.0
        )


@needs_kernels
def test_cortex_sdpa_reads_the_pool_in_place_and_gathers_for_a_mask_it_cannot_pass() -> None:
    """A compiled step's attention call (the pool as keys and values, ``cortex_slots``): a
    boolean ``[B, 1, 1, W]`` mask goes to the kernel; any other mask form takes the gathered
    path; both answer as SDPA over the gathered keys does."""
    gen = torch.Generator().manual_seed(7)
    kv_heads, groups, dim, width = 2, 2, 32, 24
    module = torch.nn.Module()
    module.num_key_value_groups = groups
    pool_k = torch.randn(1, kv_heads, 100, dim, generator=gen)
    pool_v = torch.randn(1, kv_heads, 100, dim, generator=gen)
    query = torch.randn(3, kv_heads * groups, 1, dim, generator=gen)  # [B, H, 1, D]
    slots = torch.stack([torch.randperm(100, generator=gen)[:width] for _ in range(3)])
    valid = torch.rand(3, width, generator=gen) > 0.25
    valid[:, -1] = True
    want = _reference(query[:, :, 0], pool_k[0], pool_v[0], slots, valid, dim**-0.5)
    as_bool = valid[:, None, None, :]
    as_float = torch.zeros(3, 1, 1, width).masked_fill(~as_bool, float("-inf"))
    for mask in (as_bool, as_float):
        out, _ = cortex_sdpa(module, query, pool_k, pool_v, mask, cortex_slots=slots)
        torch.testing.assert_close(out[:, 0], want, rtol=1e-5, atol=1e-5)  # [B, 1, H, D]
