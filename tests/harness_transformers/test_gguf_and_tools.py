"""GGUF headers and sizing, the tools template fallback, and the forced-call prefix."""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from cortex_transformers import gguf_cache, loading
from cortex_transformers.gguf_source import GGUFHeaderError, tensor_shapes
from cortex_transformers.harness import TransformersHarness

from cortex import starter
from cortex.errors import InvalidRequest
from cortex.neuron.harness import LoadOptions
from cortex.protocol.neuron import LoadRequest

from .conftest import load
from .test_harness import TOOLS

# ChatML without a tools block: the shape of SmolLM2's own template.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GGUF written with the gguf package: string and string-array metadata (as tokenizers
    store them) before the tensor table, an embedding, a linear and a norm."""
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("tokenizer.chat_template", CHATML)
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(300)])
    writer.add_array("tokenizer.ggml.scores", [0.5] * 300)
    writer.add_uint32("llama.context_length", 128)
    writer.add_tensor("token_embd.weight", np.zeros((300, 16), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((16, 16), dtype=np.float32))
    writer.add_tensor("blk.0.attn_norm.weight", np.zeros((16,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama as GGUF (float32 tensors, no tokenizer): what transformers reads."""
    vocab, hidden, layers, heads, kv_heads, ffn = 256, 64, 2, 4, 2, 128
    kv = kv_heads * hidden // heads
    rng = np.random.default_rng(0)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    path = tmp_path_factory.mktemp("llama") / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    writer.add_tensor("token_embd.weight", weight(vocab, hidden))
    for i in range(layers):
        for name, shape in [
            ("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden)),
            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)),
            ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn)),
        ]:  # fmt: skip
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.add_tensor("output.weight", weight(vocab, hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_loads_dequantised_and_requantised_with_bitsandbytes(llama_gguf: Path) -> None:
    """transformers refuses a quantization_config with gguf_file: 4bit is a second pass."""
    pytest.importorskip("bitsandbytes")
    spec = {"model": "g", "source": str(llama_gguf), "dtype": "float32"}
    # 4bit first: the requantizing path runs on a GGUF not converted before (gguf_cache.py).
    four = loading.load_model(
        LoadRequest(**spec, quantization="4bit"),  # type: ignore[arg-type]
        str(llama_gguf),
        "cpu",
        LoadOptions(),
    )
    plain = loading.load_model(LoadRequest(**spec), str(llama_gguf), "cpu", LoadOptions())  # type: ignore[arg-type]
    assert type(plain.model.layers[0].mlp.up_proj).__name__ == "Linear"
    assert type(four.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    assert four.get_memory_footprint() < 0.5 * plain.get_memory_footprint()
    # The header estimate (run before a load starts) agrees with what both loads measure.
    for model, quantization in ((plain, "none"), (four, "4bit")):
        request = LoadRequest(**spec, quantization=quantization)  # type: ignore[arg-type]
        estimate = TransformersHarness().estimate_bytes(request, str(llama_gguf))
        assert estimate == pytest.approx(model.get_memory_footprint(), rel=0.05)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        assert torch.isfinite(four(input_ids=ids).logits).all()


def test_tensor_shapes_come_from_the_header(small_gguf: Path) -> None:
    # GGUF stores dims innermost first: numpy (300, 16) is [16, 300].
    assert tensor_shapes(small_gguf) == [
        ("token_embd.weight", [16, 300]),
        ("blk.0.attn_q.weight", [16, 16]),
        ("blk.0.attn_norm.weight", [16]),
    ]


@pytest.mark.parametrize(
    ("dtype", "quantization", "expected"),
    [
        ("float32", "none", (4800 + 256 + 16) * 4),
        ("bfloat16", "none", (4800 + 256 + 16) * 2),
        # Only the 2-D linear is quantized; the embedding and the norm keep the dtype.
        ("float32", "4bit", (4800 + 16) * 4 + 256 * (0.5 + 4 / 64)),
    ],
)
def test_estimate_reads_a_gguf_dequantised_to_the_dtype(
    small_gguf: Path, dtype: str, quantization: str, expected: float
) -> None:
    request = LoadRequest(model="m", source="s", dtype=dtype, quantization=quantization)  # type: ignore[arg-type]
    assert TransformersHarness().estimate_bytes(request, str(small_gguf)) == int(expected)


def test_a_broken_gguf_is_a_bad_source(tmp_path: Path, small_gguf: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    truncated = tmp_path / "short.gguf"
    truncated.write_bytes(small_gguf.read_bytes()[:100])
    for path in (junk, truncated):
        with pytest.raises(InvalidRequest) as err:
            TransformersHarness().estimate_bytes(LoadRequest(model="m", source="s"), str(path))
        assert err.value.param == "source"
    with pytest.raises(GGUFHeaderError, match="ends early"):
        tensor_shapes(truncated)


def test_starter_gguf_estimate_matches_its_parameter_count() -> None:
    path = starter.cached()
    if path is None:
        pytest.skip("the SmolLM2 GGUF is not cached (make model-fetch)")
    shapes = tensor_shapes(path)
    assert sum(math.prod(s) for _, s in shapes) == 134_515_008  # SmolLM2-135M
    request = LoadRequest(model="m", source="s", dtype="float32")
    assert TransformersHarness().estimate_bytes(request, str(path)) == 134_515_008 * 4


@pytest.mark.parametrize(
    "template",
    [CHATML, "{% if tools %}{{ raise_exception('no tools here') }}{% endif %}" + CHATML],
    ids=["drops-tools", "raises-on-tools"],
)
def test_a_template_without_tools_falls_back_to_hermes_when_asked(
    demo_dir: Path, template: str
) -> None:
    model = load(demo_dir, chat_template=template, tool_parser="hermes")
    try:
        text = model._tokenizer.decode(model.encode_chat(HELLO, TOOLS))
        assert "<tools>" in text and '"name": "get_weather"' in text and "<tool_call>" in text
        # Without tools the model's own template still renders the conversation.
        plain = model._tokenizer.decode(model.encode_chat(HELLO, None))
        assert plain == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    finally:
        model.unload()


def test_a_template_without_tools_refuses_them_without_a_parser(demo_dir: Path) -> None:
    model = load(demo_dir, chat_template=CHATML, tool_parser="none")
    try:
        with pytest.raises(InvalidRequest) as err:
            model.encode_chat(HELLO, TOOLS)
        assert err.value.param == "tools"
        assert "demo" in err.value.message and 'tool_parser = "hermes"' in err.value.message
    finally:
        model.unload()


def test_prefix_is_the_start_of_the_assistant_turn(demo) -> None:
    prefix = '<tool_call>\n{"name": "get_weather", "arguments": '
    text = demo._tokenizer.decode(demo.encode_chat(HELLO, TOOLS, prefix=prefix))
    assert text.endswith("<|im_start|>assistant\n" + prefix)


def _copy(gguf_file: Path, into: Path) -> Path:
    into.mkdir()
    copy = into / gguf_file.name
    copy.write_bytes(gguf_file.read_bytes())
    return copy


def test_a_gguf_conversion_is_kept_and_read_back_identical(
    llama_gguf: Path, tmp_path: Path
) -> None:
    source = _copy(llama_gguf, tmp_path / "root")
    request = LoadRequest(model="g", source=str(source), dtype="float32")
    first = loading.load_model(request, str(source), "cpu", LoadOptions())
    kept = gguf_cache.converted(str(source), "float32")
    assert kept is not None and (kept / "model.safetensors").is_file()
    assert kept.parent.parent == source.parent / gguf_cache.CACHE_DIR
    again = loading.load_model(request, str(source), "cpu", LoadOptions())
    assert getattr(again, "hf_quantizer", None) is None  # a plain checkpoint this time
    ours, theirs = first.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_changed_gguf_is_converted_again(llama_gguf: Path, tmp_path: Path) -> None:
    source = _copy(llama_gguf, tmp_path / "root")
    request = LoadRequest(model="g", source=str(source), dtype="float32")
    loading.load_model(request, str(source), "cpu", LoadOptions())
    with source.open("ab") as f:
        f.write(b"\0" * 32)  # other bytes under the same name: another key
    assert gguf_cache.converted(str(source), "float32") is None


def test_a_read_only_root_loads_without_keeping(
    llama_gguf: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _copy(llama_gguf, tmp_path / "root")
    request = LoadRequest(model="g", source=str(source), dtype="float32")

    def refuse(into: Path) -> None:
        raise PermissionError(13, "Permission denied", str(into))

    gguf_cache.keep(str(source), "float32", refuse)
    assert "its conversion was not kept" in caplog.text
    assert gguf_cache.converted(str(source), "float32") is None
    assert not list((source.parent / gguf_cache.CACHE_DIR).rglob("*.safetensors"))
    loading.load_model(request, str(source), "cpu", LoadOptions())  # still loads
