"""A model's own sampling defaults, read from its generation_config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cortex_transformers.loading import generation_defaults

from cortex.config import SamplingDefaults


def _model_dir(tmp_path: Path, config: object) -> str:
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_the_four_sampling_keys_are_read_and_the_rest_ignored(tmp_path: Path) -> None:
    qwen3 = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "eos_token_id": 2}
    assert generation_defaults(_model_dir(tmp_path, qwen3)) == SamplingDefaults(
        temperature=0.6, top_p=0.95, top_k=20
    )


def test_a_model_without_one_has_no_defaults(tmp_path: Path) -> None:
    assert generation_defaults(str(tmp_path)).empty  # a directory without the file
    assert generation_defaults(str(tmp_path / "model.gguf")).empty  # a GGUF file
    assert generation_defaults("Qwen/Qwen3-8B").empty  # a hub id


@pytest.mark.parametrize(
    "config", [{"temperature": -1.0}, {"top_p": "high"}, ["not", "an", "object"]]
)
def test_values_out_of_bounds_are_skipped_not_fatal(
    tmp_path: Path, config: object, caplog: pytest.LogCaptureFixture
) -> None:
    assert generation_defaults(_model_dir(tmp_path, config)).empty
    assert "ignoring the sampling defaults" in caplog.text
