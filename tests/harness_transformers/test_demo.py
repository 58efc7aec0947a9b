from __future__ import annotations

from pathlib import Path

import pytest
from cortex_transformers.demo import main, write_demo_model
from transformers import AutoModelForCausalLM, AutoTokenizer


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_demo_model_is_byte_identical_for_a_seed(tmp_path: Path, demo_dir: Path) -> None:
    again = write_demo_model(tmp_path / "again")
    other = write_demo_model(tmp_path / "other", seed=1)
    assert _files(again) == _files(demo_dir)
    assert _files(other)["model.safetensors"] != _files(demo_dir)["model.safetensors"]


def test_demo_model_loads_with_from_pretrained(demo_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(demo_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(demo_dir, local_files_only=True)
    assert model.config.model_type == "qwen3"
    assert model.num_parameters() < 1_000_000
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert model.generation_config.eos_token_id == [im_end, endoftext]
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert tokenizer.padding_side == "left"
    for token in ("<tool_call>", "</tool_call>", "<think>", "</think>"):
        assert tokenizer.convert_ids_to_tokens(tokenizer.encode(token)) == [token]


def test_module_entry_point_writes_the_model(tmp_path: Path, capsys) -> None:
    main([str(tmp_path / "cli"), "--seed", "2"])
    assert (tmp_path / "cli" / "model.safetensors").exists()
    assert str(tmp_path / "cli") in capsys.readouterr().out


@pytest.mark.slow
def test_small_demo_model_has_the_documented_shape(tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(
        write_demo_model(tmp_path, size="small"), local_files_only=True
    )
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (512, 8, 32000)
    assert 50_000_000 < model.num_parameters() < 80_000_000
