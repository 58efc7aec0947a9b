from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from click.testing import CliRunner
from cortex_transformers.commands import demo_model
from cortex_transformers.demo import write_demo_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from cortex.cli import COMMANDS_GROUP, main


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


def test_demo_model_is_a_cortex_command_through_the_harness_entry_point() -> None:
    found = entry_points(group=COMMANDS_GROUP, name="demo-model")
    assert found, (
        "the transformers harness's cortex.commands entry point is not installed; "
        "`make install` installs it (pip install -e harnesses/transformers)"
    )
    assert next(iter(found)).load() is demo_model


def test_cortex_demo_model_writes_the_model_and_its_variants(tmp_path: Path) -> None:
    runner = CliRunner()
    plain = runner.invoke(main, ["demo-model", str(tmp_path / "cli"), "--seed", "2"])
    assert plain.exit_code == 0, plain.output
    assert (tmp_path / "cli" / "model.safetensors").exists()
    assert str(tmp_path / "cli") in plain.output
    fim = runner.invoke(main, ["demo-model", str(tmp_path / "fim"), "--fim"])
    assert fim.exit_code == 0, fim.output
    assert "<|fim_prefix|>" in (tmp_path / "fim" / "tokenizer.json").read_text()
    embed = runner.invoke(main, ["demo-model", str(tmp_path / "embed"), "--embed"])
    assert embed.exit_code == 0, embed.output
    assert json.loads((tmp_path / "embed" / "modules.json").read_text())


@pytest.mark.slow
def test_small_demo_model_has_the_documented_shape(tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(
        write_demo_model(tmp_path, size="small"), local_files_only=True
    )
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (512, 8, 32000)
    assert 50_000_000 < model.num_parameters() < 80_000_000
