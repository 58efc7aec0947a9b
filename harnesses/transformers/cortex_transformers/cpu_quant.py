"""Weight-only int8 / int4 linears on CPU: ``quantization = "int8"`` or ``"int4"``.

A decode step on CPU is bound by reading the weights: SmolLM2-135M's linears are 540 MB in fp32
and ~70 MB in 4 bits. A decode step's rows (up to ``QMM_ROWS`` or ``KERNEL_ROWS``) multiply
packed weights without unpacking them to floats: on CPUs with AVX512-VNNI through qmm_kernel
(the activations rounded to int8 per block of 32, as llama.cpp does), elsewhere through
PyTorch's kernels (``_weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``), which are fast
only with bf16 activations (4-7x slower than fp32 with fp32 ones, bench/quant_kernels.py), so
the rows are rounded to bf16 there. A prefill chunk, where those kernels' compute loses to
fp32's, multiplies in fp32 over weights dequantised for the call. Everything else (embeddings,
norms, attention, the KV cache) stays fp32.

- ``int4``: asymmetric groups of 32 along the input dimension (tinygemm's layout:
  ``w = (q - 8) * scale + zero``), the grid of a GGUF's Q4_1, so a Q4_1 model requantises to
  its own values (within the fp16 rounding of scales and offsets, or bf16's in PyTorch's
  kernel, ~0.2 %); the LM head gets int8.
- ``int8``: symmetric, one scale per output channel.

A linear whose input width is not a whole number of groups, or a model on another device, stays
as it is. The cost in quality is measured by bench/quantization.py (perplexity on a fixed text
against fp32) and stated in docs/configuration.md.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

from cortex_transformers import qmm_kernel
from cortex_transformers.shared_input import fuse_siblings

log = logging.getLogger(__name__)

CPU_QUANTIZATIONS = ("int8", "int4")
INT4_GROUP = 32
INT4_ROWS = 16  # the packed layout holds output features in tiles of 16: pad to a whole tile
# Up to this many rows a call goes through the kernel, above through float32 over weights
# dequantised for the call: where the two crossed on one core (one 576x1536 layer: int4's
# kernel 3.8 ms at 128 rows against 4.0 dequantised, 13.6 against 8.6 at 512; int8's 2.1
# against 2.5 at 64, 4.0 against 2.8 at 128). `bench/quant_kernels.py --batch 128 512` times
# the kernels' side.
KERNEL_ROWS = {"int4": 128, "int8": 64}
# The same crossing for qmm_kernel, whose own unpacking is ~10x faster than tensor ops (int4,
# one core: 3072x576 at 32 rows 1.41 ms against 1.51 dequantised, 3.0 against 2.3 at 64).
# Prefill passes go to float32 whatever their rows (ProductMode).
QMM_ROWS = 40


class ProductMode:
    """Shared by one model's quantised linears; the model's worker thread, its one writer, sets
    ``prefill`` around prefill passes (``float32_prefill``).

    A prefill's products go through float32 whatever their row count: its logits pick the
    prompt's first token, and the kernel's int8 rounding moved them by ~0.1 (SmolLM2's fp32
    answer to "What is the capital of France?" leads by 0.08 logits; one rounding flipped it,
    as it does in llama.cpp, and whether a prompt was cached decided which answer came back).
    The LM head, whose input is rounded finer, keeps its kernel. Compiled graphs run decode
    steps only and are traced with ``prefill`` off.
    """

    __slots__ = ("prefill",)

    def __init__(self) -> None:
        self.prefill = False


@contextlib.contextmanager
def float32_prefill(mode: ProductMode | None) -> Iterator[None]:
    """Within: ``mode``'s linears multiply prefill-precise (see ProductMode)."""
    if mode is None:
        yield
        return
    mode.prefill = True
    try:
        yield
    finally:
        mode.prefill = False


def product_mode(model: nn.Module) -> ProductMode | None:
    """The ProductMode of ``model``'s quantised linears; None when it has none."""
    for module in model.modules():
        if isinstance(module, Int4Linear | Int8Linear):
            return module.mode
    return None


def cpu_quantization_refusal(device: str, quantization: str) -> str | None:
    """Why a load cannot use ``quantization`` on ``device`` (None: it can)."""
    if quantization in CPU_QUANTIZATIONS and device != "cpu":
        return (
            f"quantization {quantization!r} uses PyTorch's CPU kernels; on {device} use "
            "'8bit' or '4bit' (bitsandbytes)"
        )
    return None


class Int4Linear(nn.Module):
    """``nn.Linear`` with 4-bit grouped weights; out in the input's dtype (fp32 on the CPU).

    Up to ``QMM_ROWS`` / ``KERNEL_ROWS[int4]`` rows (decode steps) go through a kernel
    (qmm_kernel's, or else PyTorch's with bf16 inside); more (prefill chunks) through a float32
    matmul over weights dequantised for that call: a kernel's compute, not its memory traffic,
    is the cost there (2x fp32's at 512 rows). qmm_kernel unpacks its own layout in one pass;
    PyTorch's layout is private, so without qmm_kernel a second copy of the levels is kept as
    plain nibbles.
    """

    packed: torch.Tensor
    scales_and_zeros: torch.Tensor
    nibbles: torch.Tensor
    scale: torch.Tensor
    low: torch.Tensor

    def __init__(
        self, linear: nn.Linear, group: int = INT4_GROUP, mode: ProductMode | None = None
    ) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.out_features, self.in_features = weight.shape
        self.group = group
        self.mode = mode or ProductMode()
        self.kernel: qmm_kernel.KernelWeights | None = None
        if group == qmm_kernel.BLOCK and qmm_kernel.usable(self.in_features):
            levels, scale, zero = int4_levels(weight, group)
            self.kernel = qmm_kernel.KernelWeights(levels, scale, zero - 8 * scale, 4)
        else:
            padding = -self.out_features % INT4_ROWS  # a vocabulary of 1028 rows, say
            padded = torch.nn.functional.pad(weight, (0, 0, 0, padding))
            all_levels, scale, zero = int4_levels(padded, group)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                all_levels.to(torch.int32), 1
            )
            levels = all_levels[: self.out_features]
            pairs = torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
            self.register_buffer("packed", packed)
            self.register_buffer("scales_and_zeros", pairs)  # [K / group, N, 2], the kernel's
            rounded = pairs[:, : self.out_features].float().transpose(0, 1)  # [N, K / group, 2]
            self.register_buffer("scale", rounded[..., :1].contiguous())
            self.register_buffer("low", (rounded[..., 1:] - 8 * rounded[..., :1]).contiguous())
            # The prefill path's copy: plain nibbles (scale and low as the kernel rounds them).
            nibbles = (levels[:, 0::2] | (levels[:, 1::2] << 4)).contiguous()
            self.register_buffer("nibbles", nibbles)
        self.bias = _bias(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        limit = QMM_ROWS if self.kernel is not None else KERNEL_ROWS["int4"]
        if flat.shape[0] > limit or self.mode.prefill:
            out = torch.nn.functional.linear(flat.float(), self.dequantised())
            return _finish(out, x, self.out_features, self.bias)
        if self.kernel is not None:
            return _finish(self.kernel.product(flat), x, self.out_features, self.bias)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat.to(torch.bfloat16), self.packed, self.group, self.scales_and_zeros
        )
        if out.shape[-1] != self.out_features:
            out = out[:, : self.out_features]
        return _finish(out, x, self.out_features, self.bias)

    def dequantised(self) -> torch.Tensor:
        """The float32 weight ``[N, K]``: ``level * scale + low`` (``low = zero - 8 * scale``)."""
        if self.kernel is not None:
            return self.kernel.dequantised()
        n, k, group = self.out_features, self.in_features, self.group
        levels = torch.stack([self.nibbles & 15, self.nibbles >> 4], -1)
        levels = levels.reshape(n, k // group, group).float()
        return torch.addcmul(self.low, levels, self.scale).reshape(n, k)


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights and one scale per output channel; more than
    ``QMM_ROWS`` / ``KERNEL_ROWS[int8]`` rows go through a float32 matmul over the dequantised
    weight.

    Where qmm_kernel runs, the weights are kept once, in its layout: unsigned (``q + 128``)
    with ``low = -128 * scale``, so the kernel's ``level * scale + low`` is the same weight.
    """

    weight_int8: torch.Tensor
    scales: torch.Tensor

    def __init__(
        self, linear: nn.Linear, precise_input: bool = False, mode: ProductMode | None = None
    ) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.out_features, self.in_features = weight.shape
        self.mode = mode or ProductMode()
        # The LM head's: qmm_kernel rounds its input in two passes (~15 bits, not 8), since
        # its logits pick each token (see qmm.cpp's kFiner).
        self.passes = 2 if precise_input else 1
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
        quantised = torch.round(weight / scale[:, None]).clamp(-128, 127).to(torch.int8)
        self.kernel: qmm_kernel.KernelWeights | None = None
        if qmm_kernel.usable(self.in_features):
            blocks = self.in_features // qmm_kernel.BLOCK
            levels = (quantised.to(torch.int16) + 128).to(torch.uint8)
            scales = scale.half().float()[:, None].expand(-1, blocks)
            self.kernel = qmm_kernel.KernelWeights(levels, scales, -128 * scales, 8)
        else:
            self.register_buffer("weight_int8", quantised)
            self.register_buffer("scales", scale.to(torch.bfloat16))
        self.bias = _bias(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        limit = QMM_ROWS if self.kernel is not None else KERNEL_ROWS["int8"]
        if flat.shape[0] > limit or (self.mode.prefill and self.passes == 1):
            out = torch.nn.functional.linear(flat.float(), self.dequantised())
        elif self.kernel is not None:
            out = self.kernel.product(flat, self.passes)
        else:
            bf16 = flat.to(torch.bfloat16)
            out = torch.ops.aten._weight_int8pack_mm(bf16, self.weight_int8, self.scales)
        return _finish(out, x, self.out_features, self.bias)

    def dequantised(self) -> torch.Tensor:
        """The float32 weight ``[N, K]``."""
        if self.kernel is not None:
            return self.kernel.dequantised()
        return self.weight_int8.float() * self.scales.float()[:, None]


def int4_levels(
    weight: torch.Tensor, group: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 ``[N, K]`` -> (levels 0-15 as uint8 ``[N, K]``, scale and zero ``[N, K / group]``)
    with ``w ~ (level - 8) * scale + zero``."""
    n, k = weight.shape
    grouped = weight.reshape(n, k // group, group)
    low, high = grouped.amin(-1, keepdim=True), grouped.amax(-1, keepdim=True)
    scale = (high - low).clamp(min=1e-8) / 15
    levels = torch.round((grouped - low) / scale).clamp(0, 15).to(torch.uint8).reshape(n, k)
    zero = low + 8 * scale
    return levels, scale.reshape(n, -1), zero.reshape(n, -1)


def _bias(linear: nn.Linear) -> nn.Parameter | None:
    if linear.bias is None:
        return None
    return nn.Parameter(linear.bias.detach().float(), requires_grad=False)


def _finish(
    out: torch.Tensor, x: torch.Tensor, features: int, bias: nn.Parameter | None
) -> torch.Tensor:
    result = out.to(x.dtype).reshape(*x.shape[:-1], features)
    return result + bias if bias is not None else result


def quantize_linears(model: nn.Module, quantization: str) -> int:
    """Replace every ``nn.Linear`` of ``model`` (the LM head too, untied from the embeddings)
    with its ``quantization`` form, in place; returns how many were replaced. Siblings that
    read one input (q/k/v, gate/up) become one quantised linear (shared_input.py).

    Under int4 the LM head gets int8: GGUFs keep it (or the embeddings it is tied to) at 6-8
    bits, so 4 bits would add its largest error to every token's choice (SmolLM2: 9 % relative
    weight error, perplexity +10 % instead of +1-2 %) for ~2 ms a step saved. For the same
    reason its input is rounded finer (``precise_input``).
    """
    head = _output_embeddings(model)
    mode = ProductMode()
    replaced = 0
    for parent in list(model.modules()):
        replaced += fuse_siblings(parent, lambda linear: _quantised(linear, quantization, mode))
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or child.weight.device.type != "cpu":
                continue
            if child is head:
                replacement: nn.Module | None = Int8Linear(child, precise_input=True, mode=mode)
            else:
                replacement = _quantised(child, quantization, mode)
            if replacement is not None:
                setattr(parent, name, replacement)
                replaced += 1
    config = getattr(model, "config", None)
    if config is not None and replaced:
        config.tie_word_embeddings = False  # the head is its own (quantised) module now
    log.info("%s: %d linears quantised", quantization, replaced)
    return replaced


def _quantised(linear: nn.Linear, quantization: str, mode: ProductMode) -> nn.Module | None:
    """``linear`` in its ``quantization`` form; None where int4 cannot take it (an input
    width that is not a whole number of groups)."""
    if quantization != "int4":
        return Int8Linear(linear, mode=mode)
    return None if linear.in_features % INT4_GROUP else Int4Linear(linear, mode=mode)


def _output_embeddings(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None
