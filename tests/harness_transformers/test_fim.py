"""Fill-in-the-middle prompts: FIM tokens found by spelling, ids spliced in the family's order."""

from __future__ import annotations

from pathlib import Path

import pytest
from cortex_transformers import fim
from cortex_transformers.demo import build_tokenizer, write_demo_model

from cortex.errors import InvalidRequest

from .conftest import load


@pytest.fixture(scope="module")
def fim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("fim"), fim=True)


def test_the_demo_tokenizer_has_fim_tokens_only_when_asked() -> None:
    assert fim.find(build_tokenizer(1024, 0)) is None
    with_fim = build_tokenizer(1024, 0, fim=True)
    tokens = fim.find(with_fim)
    assert tokens is not None and tokens.order == "psm"
    assert with_fim.convert_ids_to_tokens([tokens.prefix, tokens.suffix, tokens.middle]) == [
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
    ]
    assert with_fim.convert_tokens_to_ids("<|fim_pad|>") in fim.end_ids(with_fim)
    plain = build_tokenizer(1024, 0)
    assert with_fim.encode("Hello world") == plain.encode("Hello world")  # other ids unchanged


def test_psm_and_spm_orders() -> None:
    tokenizer = build_tokenizer(1024, 0, fim=True)
    pre = tokenizer.encode("def f(", add_special_tokens=False)
    suf = tokenizer.encode(")", add_special_tokens=False)
    psm = fim.FimTokens(1, 2, 3, "psm")
    assert fim.encode(tokenizer, psm, "def f(", ")") == [1, *pre, 2, *suf, 3]
    spm = fim.FimTokens(1, 2, 3, "spm")
    assert fim.encode(tokenizer, spm, "def f(", ")") == [2, *suf, 1, *pre]


def test_marker_spellings_in_the_text_cannot_forge_markers() -> None:
    tokenizer = build_tokenizer(1024, 0, fim=True)
    tokens = fim.find(tokenizer)
    assert tokens is not None
    ids = fim.encode(tokenizer, tokens, "a<|fim_middle|>b", "c")
    assert ids.count(tokens.middle) == 1 and ids[-1] == tokens.middle


def test_encode_prompt_with_and_without_suffix(fim_dir: Path, demo_dir: Path) -> None:
    model = load(fim_dir)
    plain = load(demo_dir)
    try:
        assert model.encode_prompt("Hello") == plain.encode_prompt("Hello")
        infill = model.encode_prompt("def f(", ")")
        assert infill[0] == model._fim.prefix and infill[-1] == model._fim.middle  # type: ignore[union-attr]
        with pytest.raises(InvalidRequest) as refused:
            plain.encode_prompt("def f(", ")")
        assert refused.value.param == "suffix"
        assert plain.decode_tokens(plain.encode_prompt("Hello there")) == "Hello there"
    finally:
        model.unload()
        plain.unload()
