"""Embedding models: pooling from sentence-transformers files, batches equal to one-by-one,
Matryoshka dimensions, decoder bodies, refusals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from cortex_transformers.demo import EMBED_HIDDEN, write_demo_embedding_model
from cortex_transformers.embedding import EmbeddingModel, Pooling, _batches, pool, read_pooling
from cortex_transformers.harness import TransformersHarness

from cortex.errors import ContextLengthExceeded, InvalidRequest
from cortex.neuron.harness import LoadOptions
from cortex.protocol.neuron import LoadRequest


def _load(path: Path, **request: object) -> EmbeddingModel:
    spec = LoadRequest(model="embed", source=str(path), task="embed", **request)  # type: ignore[arg-type]
    model = TransformersHarness().load(spec, str(path), "cpu", LoadOptions(), lambda f, s: None)
    assert isinstance(model, EmbeddingModel) and model.task == "embed"
    return model


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingModel:
    return _load(write_demo_embedding_model(tmp_path_factory.mktemp("embed")))


def _embed(
    model: EmbeddingModel, inputs: list[str | list[int]], dims: int | None = None
) -> list[list[float]]:
    return asyncio.run(model.embed(inputs, dims)).vectors


def test_a_batch_equals_its_inputs_embedded_one_by_one(encoder: EmbeddingModel) -> None:
    texts: list[str | list[int]] = ["a", "a much longer input " * 20, "mid sized text here", "b c"]
    batch = _embed(encoder, texts)
    for text, vector in zip(texts, batch, strict=True):
        (alone,) = _embed(encoder, [text])
        assert len(alone) == EMBED_HIDDEN
        assert max(abs(a - b) for a, b in zip(alone, vector, strict=True)) < 1e-5
        assert abs(sum(v * v for v in alone) - 1.0) < 1e-5


def test_token_ids_and_strings_agree(encoder: EmbeddingModel) -> None:
    ids = list(encoder._tokenizer.encode("hello there", add_special_tokens=True))
    by_text, by_ids = _embed(encoder, ["hello there", ids])
    assert by_text == pytest.approx(by_ids, abs=1e-6)


def test_matryoshka_dimensions_are_allowed_others_refused(encoder: EmbeddingModel) -> None:
    (short,) = _embed(encoder, ["x"], 16)
    assert len(short) == 16 and abs(sum(v * v for v in short) - 1.0) < 1e-5
    assert len(_embed(encoder, ["x"], EMBED_HIDDEN)[0]) == EMBED_HIDDEN
    with pytest.raises(InvalidRequest) as refused:
        _embed(encoder, ["x"], 20)
    assert refused.value.param == "dimensions"


def test_too_long_and_out_of_vocab_inputs_are_refused(encoder: EmbeddingModel) -> None:
    with pytest.raises(ContextLengthExceeded) as long:
        _embed(encoder, ["ok", "word " * 600])
    assert long.value.param == "input[1]"
    with pytest.raises(InvalidRequest):
        _embed(encoder, [[10**6]])


def test_truncate_cuts_long_inputs_to_the_context_keeping_their_start(
    encoder: EmbeddingModel,
) -> None:
    text = "word " * 600
    ids = list(encoder._tokenizer.encode(text, add_special_tokens=True))
    assert len(ids) > encoder.context_length
    cut = asyncio.run(encoder.embed(["ok", text, ids], None, truncate=True))
    assert cut.prompt_tokens == len(_ids(encoder, "ok")) + 2 * encoder.context_length
    (alone,) = _embed(encoder, [ids[: encoder.context_length]])  # the demo adds no [SEP]
    assert cut.vectors[1] == pytest.approx(alone, abs=1e-5)
    assert cut.vectors[2] == pytest.approx(alone, abs=1e-5)
    assert _embed(encoder, ["ok"])[0] == pytest.approx(cut.vectors[0], abs=1e-5)


def _ids(model: EmbeddingModel, text: str) -> list[int]:
    return list(model._tokenizer.encode(text, add_special_tokens=True))


def test_a_decoder_body_embeds_with_last_token_pooling(demo_dir: Path) -> None:
    model = _load(demo_dir)
    try:
        assert model._pooling == Pooling("lasttoken", normalize=True)
        one, two = _embed(model, ["first input", "a second and longer input"])
        (alone,) = _embed(model, ["first input"])
        assert one == pytest.approx(alone, abs=1e-5) and one != two
        with pytest.raises(InvalidRequest):  # no matryoshka_dimensions in its config
            _embed(model, ["x"], 8)
    finally:
        model.unload()


def test_pooling_modes() -> None:
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])  # [2, 3, 1]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, mask, "cls").flatten().tolist() == [1.0, 2.0]
    assert pool(hidden, mask, "mean").flatten().tolist() == [2.0, 4.0]
    assert pool(hidden, mask, "max").flatten().tolist() == [3.0, 6.0]
    assert pool(hidden, mask, "lasttoken").flatten().tolist() == [3.0, 6.0]


def test_read_pooling_follows_sentence_transformers_files(tmp_path: Path) -> None:
    assert read_pooling(tmp_path, is_decoder=False) == Pooling("mean", True)
    st = "sentence_transformers.models."
    modules = [{"type": st + "Transformer", "path": ""}, {"type": st + "Pooling", "path": "p"}]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert read_pooling(tmp_path, is_decoder=True) == Pooling("cls", normalize=False)
    modules.append({"type": st + "Dense", "path": "d"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(InvalidRequest, match="Dense"):
        read_pooling(tmp_path, is_decoder=False)


def test_batches_bound_padded_tokens() -> None:
    lengths = [1, 2, 3, 10, 10]
    assert _batches([0, 1, 2, 3, 4], lengths, max_tokens=10) == [[0, 1, 2], [3], [4]]
    assert _batches([0, 1, 2, 3, 4], lengths, max_tokens=100) == [[0, 1, 2, 3, 4]]
