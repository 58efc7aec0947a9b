"""The KV pool's memory: zeroed, writable, and on the CPU not touched until used."""

from __future__ import annotations

import os

import pytest
import torch
from cortex_transformers.kvcache import zeros


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_zeros_read_zero_and_keep_what_is_written(dtype: torch.dtype) -> None:
    first, second = (
        zeros((3, 100, 8), dtype, torch.device("cpu")),
        zeros((3, 100, 8), dtype, torch.device("cpu")),
    )
    assert first.shape == (3, 100, 8) and first.dtype == dtype
    assert not first.any()
    first[1, 7] = 2.5
    assert first[1, 7].tolist() == [2.5] * 8
    assert not second.any()  # separate memory


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_a_big_cpu_pool_costs_no_memory_until_written() -> None:
    before = _resident_bytes()
    pool = zeros((4, 1 << 20, 64), torch.float32, torch.device("cpu"))  # 1 GiB
    assert _resident_bytes() - before < 64 << 20
    pool[0, :1024] = 1.0  # 256 KiB written: only those pages become resident
    assert _resident_bytes() - before < 64 << 20
    assert float(pool[0, :1024].sum()) == 1024 * 64
