"""``torch.ops.cortex_quant.qmm``: int4/int8 weights times int8-quantised activations (qmm.cpp).

PyTorch's CPU kernels for packed weights dequantise every weight to a float and want bf16
activations, which CPUs without AVX512-BF16 convert one by one; a 135M model's decode step spent
~9 ms of its ~17 there. llama.cpp instead quantises each activation row to int8 per block of 32
and multiplies in integers (AVX512-VNNI), which is what qmm.cpp does. The cost in quality is one
more rounding of the activations (bench/quantization.py measures it).

The kernel is built and loaded with cortex's other CPU kernels (cpu_kernels.py), and used only
where they run; elsewhere PyTorch's kernels stay in charge.
"""

from __future__ import annotations

import torch
from torch import nn

from cortex_transformers import cpu_kernels

CHUNK = 64  # weights per chunk: the kernel's unit along K
BLOCK = 32  # weights (and activations) per scale
# A chunk's byte order: four weights of its first block, four of its second, alternating
# (qmm.cpp's kSource); CHUNK_ORDER[p] is the chunk index of the weight at byte position p.
CHUNK_ORDER = torch.tensor(
    [(lane % 2) * BLOCK + (lane // 2) * 4 + r for lane in range(16) for r in range(4)]
)


def usable(in_features: int) -> bool:
    """Whether a linear of this input width can run on the kernel here."""
    return in_features % CHUNK == 0 and cpu_kernels.loaded()


def pack(levels: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned levels ``[N, K]`` (0-15 for 4 bits, 0-255 for 8) in the kernel's layout:
    ``[N, K * bits / 8]`` bytes, each chunk of 64 in ``CHUNK_ORDER``; under 4 bits byte j of a
    chunk's 32 holds its level j (low nibble) and j + 32 (high)."""
    n, k = levels.shape
    ordered = levels.reshape(n, k // CHUNK, CHUNK)[..., CHUNK_ORDER].to(torch.uint8)
    if bits == 8:
        return ordered.reshape(n, k).contiguous()
    packed = ordered[..., : CHUNK // 2] | (ordered[..., CHUNK // 2 :] << 4)
    return packed.reshape(n, k // 2).contiguous()


class KernelWeights(nn.Module):
    """One linear's weights in the kernel's layout, ``level * scale + low`` per block of 32,
    with the two products the layout serves: a decode step's (``product``) and the float32
    weight a prefill pass multiplies by (``dequantised``)."""

    weight: torch.Tensor
    scales: torch.Tensor
    lows: torch.Tensor

    def __init__(
        self, levels: torch.Tensor, scales: torch.Tensor, lows: torch.Tensor, bits: int
    ) -> None:
        """levels: unsigned ``[N, K]``; scales, lows: ``[N, K / 32]``, kept as float16."""
        super().__init__()
        self.bits = bits
        self.register_buffer("weight", pack(levels, bits))
        self.register_buffer("scales", scales.half().contiguous())
        self.register_buffer("lows", lows.half().contiguous())

    def product(self, x: torch.Tensor, passes: int = 1) -> torch.Tensor:
        """``x [M, K]`` times the weights: float32 ``[M, N]``, the input rounded to int8 per
        block of 32 in ``passes`` passes (2: ~15 bits, see qmm.cpp's kFiner)."""
        out: torch.Tensor = torch.ops.cortex_quant.qmm(
            x.float().contiguous(), self.weight, self.scales, self.lows, self.bits, passes
        )
        return out

    def dequantised(self) -> torch.Tensor:
        """The float32 weight ``[N, K]``, unpacked in one pass."""
        weight: torch.Tensor = torch.ops.cortex_quant.dequantise(
            self.weight, self.scales, self.lows, self.bits
        )
        return weight
