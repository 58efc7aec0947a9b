"""``quantization = "int8"`` / ``"int4"``: weight-only linears through PyTorch's CPU kernels."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from cortex_transformers.cpu_quant import (
    INT4_GROUP,
    KERNEL_ROWS,
    Int4Linear,
    Int8Linear,
    ProductMode,
    float32_prefill,
    quantize_linears,
)
from cortex_transformers.harness import TransformersHarness
from cortex_transformers.shared_input import SharedInput, SiblingPart, fuse_siblings
from torch import nn

from cortex.errors import InvalidRequest
from cortex.neuron.harness import LoadOptions, SamplingParams
from cortex.protocol.neuron import LoadRequest
from tests.harness_transformers.conftest import load


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def _linear(inputs: int, outputs: int, bias: bool = False) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(inputs, outputs, bias=bias)
    nn.init.normal_(linear.weight, std=0.05)
    return linear


def test_a_weight_on_the_int4_grid_comes_back_within_bf16_rounding() -> None:
    """A Q4_1 GGUF's weights lie on a 16-level grid per group of 32: int4 keeps them."""
    torch.manual_seed(1)
    levels = torch.randint(0, 16, (64, 128)).float()
    levels[:, ::INT4_GROUP] = 0  # every group spans its whole grid, so min and max are exact
    levels[:, 1::INT4_GROUP] = 15
    scale = torch.rand(64, 128 // INT4_GROUP, 1) * 0.01 + 0.001
    low = torch.randn(64, 128 // INT4_GROUP, 1) * 0.02
    weight = (levels.reshape(64, -1, INT4_GROUP) * scale + low).reshape(64, 128)
    linear = nn.Linear(128, 64, bias=False)
    linear.weight.data = weight
    x = torch.randn(3, 128)
    with torch.inference_mode():
        assert _relative_error(Int4Linear(linear)(x), linear(x)) < 0.02  # bf16: 8 bits of mantissa


@pytest.mark.parametrize(("kind", "bound"), [(Int8Linear, 0.02), (Int4Linear, 0.15)])
def test_a_quantised_linear_stays_close_to_fp32(kind: type[nn.Module], bound: float) -> None:
    linear = _linear(96, 41, bias=True)  # 41 outputs: int4 pads them to a tile of 16
    x = torch.randn(2, 5, 96)  # batch and sequence dimensions are kept
    with torch.inference_mode():
        got, want = kind(linear)(x), linear(x)
    assert got.shape == (2, 5, 41) and got.dtype == torch.float32
    assert 0 < _relative_error(got, want) < bound  # lossy, but not far


@pytest.mark.parametrize(("kind", "name"), [(Int8Linear, "int8"), (Int4Linear, "int4")])
def test_prefill_rows_and_decode_rows_see_the_same_weights(
    kind: type[nn.Module], name: str
) -> None:
    """Above KERNEL_ROWS a call multiplies in float32 over the weights dequantised for it; below,
    the kernel rounds the activations (to int8 per block of 32 in qmm_kernel, to bf16 in
    PyTorch's): the two agree to that rounding, row for row."""
    layer = kind(_linear(64, 40, bias=True))
    rows = torch.randn(KERNEL_ROWS[name] + 1, 64)
    with torch.inference_mode():
        prefill = layer(rows)  # one call over every row: the dequantised path
        decode = torch.cat([layer(rows[i : i + 8]) for i in range(0, len(rows), 8)])
    assert _relative_error(decode, prefill) < 0.02


@pytest.mark.parametrize("kind", [Int8Linear, Int4Linear])
def test_a_bfloat16_model_gets_bfloat16_back_on_both_paths(kind: type[nn.Module]) -> None:
    layer = kind(_linear(64, 48).to(torch.bfloat16))
    with torch.inference_mode():
        for rows in (1, 200):  # a decode step, a prefill chunk
            assert layer(torch.randn(rows, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_every_linear_is_replaced_and_the_head_untied(demo_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_dir, dtype=torch.float32)
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    assert quantize_linears(model, "int4") == linears
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    up = model.model.layers[0].mlp.up_proj  # one int4 product with gate_proj
    assert isinstance(up, SiblingPart) and isinstance(up._shared.fused, Int4Linear)
    assert isinstance(model.lm_head, Int8Linear)  # the head keeps 8 bits (see quantize_linears)
    assert model.lm_head.passes == 2  # and rounds its input finer
    assert not model.config.tie_word_embeddings
    with torch.inference_mode():
        after = model(input_ids=ids).logits
    cosine = torch.nn.functional.cosine_similarity(before.flatten(), after.flatten(), dim=0)
    assert cosine > 0.99


def test_a_linear_whose_width_is_not_a_whole_number_of_groups_stays_fp32() -> None:
    model = nn.Sequential(_linear(48, 16), _linear(16, 8))
    assert quantize_linears(model, "int4") == 0
    assert quantize_linears(model, "int8") == 2
    mlp = nn.Module()
    mlp.gate_proj, mlp.up_proj = _linear(48, 16), _linear(48, 16)  # siblings: left apart too
    assert quantize_linears(mlp, "int4") == 0
    assert isinstance(mlp.gate_proj, nn.Linear) and isinstance(mlp.up_proj, nn.Linear)


def test_int4_is_served_by_the_engine_and_takes_less_memory(demo_dir: Path) -> None:
    """A real load through the harness: smaller weights, and a greedy reply of the asked length."""
    plain = load(demo_dir)
    quantised = load(demo_dir, quantization="int4")
    try:
        assert quantised.bytes_used < plain.bytes_used
        params = SamplingParams(max_new_tokens=8, temperature=0.0, ignore_eos=True)

        async def counts() -> list[tuple[int, str | None]]:
            events = quantised.generate(list(range(5, 20)), params)
            return [(e.completion_tokens, e.finish_reason) async for e in events]

        assert asyncio.run(counts()) == [(n, None) for n in range(1, 8)] + [(8, "length")]
    finally:
        plain.unload()
        quantised.unload()


def test_the_cpu_kernels_are_refused_on_a_gpu_with_the_field_named(demo_dir: Path) -> None:
    request = LoadRequest(model="demo", source=str(demo_dir), quantization="int4")
    with pytest.raises(InvalidRequest, match="CPU kernels") as err:
        TransformersHarness().load(request, str(demo_dir), "cuda:0", LoadOptions(), lambda *_: None)
    assert err.value.param == "quantization"


@pytest.mark.parametrize("quantization", ["int4", "int8"])
def test_siblings_multiplied_as_one_equal_their_own_products(quantization: str) -> None:
    """q/k/v through one quantised product equal each quantised alone, whichever is called
    first, and a part called with another input recomputes."""
    from cortex_transformers.cpu_quant import _quantised

    torch.manual_seed(0)
    attention = nn.Module()
    for name, outputs in (("q_proj", 64), ("k_proj", 32), ("v_proj", 32)):
        setattr(attention, name, _linear(64, outputs, bias=True))
    mode = ProductMode()
    alone = {
        n: _quantised(getattr(attention, n), quantization, mode)
        for n in ("q_proj", "k_proj", "v_proj")
    }
    assert fuse_siblings(attention, lambda linear: _quantised(linear, quantization, mode)) == 3
    assert isinstance(attention.q_k_v_proj, SharedInput)
    x, other = torch.randn(3, 64), torch.randn(3, 64)
    with torch.inference_mode():
        for order in (("q_proj", "k_proj", "v_proj"), ("v_proj", "q_proj", "k_proj")):
            for name in order:
                torch.testing.assert_close(getattr(attention, name)(x), alone[name](x))
        attention.q_proj(x)
        torch.testing.assert_close(attention.k_proj(other), alone["k_proj"](other))


def test_a_prefill_pass_multiplies_in_float32_whatever_its_rows() -> None:
    """A prompt's first token must not hang on the kernel's int8 rounding: within
    float32_prefill a one-row call is the float32 product; the LM head (input rounded finer)
    keeps its kernel; outside, the kernel runs."""
    mode = ProductMode()
    layer = Int4Linear(_linear(128, 48), mode=mode)
    head = Int8Linear(_linear(128, 40), precise_input=True, mode=mode)
    row = torch.randn(1, 128)
    with torch.inference_mode():
        exact = torch.nn.functional.linear(row, layer.dequantised())
        with float32_prefill(mode):
            assert torch.equal(layer(row), exact)
            precise = head(row)
        assert not mode.prefill
        assert torch.equal(head(row), precise)
        if (
            layer.kernel is not None
        ):  # on CPUs without qmm_kernel both paths are PyTorch's kernel, bf16
            assert not torch.equal(layer(row), exact)
