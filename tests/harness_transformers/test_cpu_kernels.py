"""cortex's CPU kernel library: where it cannot run, PyTorch's kernels stay; and
paged_decode.cpp, a decode step's attention read in place from the KV pool, against PyTorch's
SDPA over the gathered keys and values."""

from __future__ import annotations

import pytest
import torch
from cortex_transformers import cpu_kernels

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
