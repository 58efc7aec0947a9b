"""qmm.cpp, the int8-activation kernel for int4/int8 weights, against a float reference that
rounds the activations the same way (so a wrong layout or a lost block shows as a large error,
not as rounding)."""

from __future__ import annotations

import pytest
import torch
from cortex_transformers import cpu_kernels, qmm_kernel
from cortex_transformers.cpu_quant import Int4Linear, Int8Linear
from torch import nn

pytestmark = pytest.mark.skipif(
    not cpu_kernels.loaded(), reason="cortex's CPU kernels need AVX512-VNNI/VBMI and a C++ compiler"
)


def _random_weights(
    bits: int, outputs: int, k: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(levels [N, K], scales and lows [N, K / 32] in float16), drawn after seeding with seed."""
    torch.manual_seed(seed)
    levels = torch.randint(0, 2**bits, (outputs, k), dtype=torch.uint8)
    scales = (torch.rand(outputs, k // 32) * 0.01 + 1e-3).half()
    lows = (torch.randn(outputs, k // 32) * 0.05).half()
    return levels, scales, lows


def _float64_weight(levels: torch.Tensor, scales: torch.Tensor, lows: torch.Tensor) -> torch.Tensor:
    """``level * scale + low`` per block of 32: ``[N, K]`` in float64."""
    n, k = levels.shape
    weight = levels.double().reshape(n, k // 32, 32) * scales.double()[..., None]
    return (weight + lows.double()[..., None]).reshape(n, k)


def _reference(
    x: torch.Tensor, levels: torch.Tensor, scales: torch.Tensor, lows: torch.Tensor
) -> torch.Tensor:
    """What the kernel computes, in float64: activations rounded to int8 per block of 32."""
    rows, k = x.shape
    blocks = x.double().reshape(rows, k // 32, 32)
    step = blocks.abs().amax(-1, keepdim=True) / 127
    rounded = (torch.where(step > 0, torch.round(blocks / step), 0) * step).reshape(rows, k)
    return (rounded @ _float64_weight(levels, scales, lows).T).float()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])  # every tile remainder
def test_the_kernel_matches_its_reference(bits: int, rows: int) -> None:
    outputs, k = 37, 192  # an odd output count; three chunks of 64
    levels, scales, lows = _random_weights(bits, outputs, k, seed=rows)
    x = torch.randn(rows, k)
    x[0, 32:64] = 0  # a block of zeros: no division by its zero maximum
    got = torch.ops.cortex_quant.qmm(x, qmm_kernel.pack(levels, bits), scales, lows, bits)
    want = _reference(x, levels, scales, lows)
    assert got.shape == (rows, outputs)
    assert float((got - want).norm() / want.norm()) < 1e-5


@pytest.mark.parametrize("bits", [4, 8])
def test_two_passes_come_within_float_rounding_of_the_exact_product(bits: int) -> None:
    """The LM head's mode: the input rounded twice (~15 bits), not once (8)."""
    levels, scales, lows = _random_weights(bits, 37, 192, seed=bits)
    x = torch.randn(5, 192)
    exact = (x.double() @ _float64_weight(levels, scales, lows).T).float()
    packed = qmm_kernel.pack(levels, bits)
    once = torch.ops.cortex_quant.qmm(x, packed, scales, lows, bits, 1)
    twice = torch.ops.cortex_quant.qmm(x, packed, scales, lows, bits, 2)
    assert float((twice - exact).norm() / exact.norm()) < 2e-4
    assert float((once - exact).norm() / exact.norm()) > 1e-3  # what the second pass buys


@pytest.mark.parametrize("bits", [4, 8])
def test_dequantise_gives_back_every_weight_in_its_place(bits: int) -> None:
    """The prefill path's float32 weight, unpacked from the kernel's layout in one pass."""
    levels, scales, lows = _random_weights(bits, 21, 128, seed=bits)
    got = torch.ops.cortex_quant.dequantise(qmm_kernel.pack(levels, bits), scales, lows, bits)
    want = _float64_weight(levels, scales, lows).float()
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)


def test_the_kernel_traces_into_a_compiled_graph() -> None:
    layer = Int4Linear(nn.Linear(128, 48, bias=False))
    assert layer.kernel is not None
    x = torch.randn(2, 128)
    with torch.inference_mode():
        compiled = torch.compile(layer, fullgraph=True, dynamic=False)
        assert torch.allclose(compiled(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", [Int4Linear, Int8Linear])
def test_bad_operands_are_refused_by_name(kind: type[nn.Module]) -> None:
    kernel = kind(nn.Linear(64, 16, bias=False)).kernel
    assert isinstance(kernel, qmm_kernel.KernelWeights)
    with pytest.raises(RuntimeError, match="multiple of 64"):
        torch.ops.cortex_quant.qmm(torch.randn(1, 32), kernel.weight, kernel.scales, kernel.lows, 4)
    with pytest.raises(RuntimeError, match="bits must be 4 or 8"):
        torch.ops.cortex_quant.qmm(torch.randn(1, 64), kernel.weight, kernel.scales, kernel.lows, 2)
