"""The /v1/completions and /v1/embeddings request shapes: every accepted form, every refusal a
400 naming its field."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cortex.errors import InvalidRequest
from cortex.protocol import decode
from cortex.protocol.completions import CompletionRequest
from cortex.protocol.embeddings import EmbeddingRequest


def _completion(**fields: Any) -> CompletionRequest:
    return decode(msgspec.json.encode({"model": "m", **fields}), CompletionRequest)


def _embedding(**fields: Any) -> EmbeddingRequest:
    return decode(msgspec.json.encode({"model": "m", **fields}), EmbeddingRequest)


@pytest.mark.parametrize(
    ("prompt", "single"),
    [("hi", "hi"), ("", ""), ([1, 2], [1, 2]), (["hi"], "hi"), ([[3, 4]], [3, 4])],
)
def test_a_prompt_in_every_accepted_form(prompt: Any, single: Any) -> None:
    assert _completion(prompt=prompt).single_prompt == single


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": "a", "n": 2}, "n"),
        ({"prompt": "a", "best_of": 2}, "best_of"),
        ({"prompt": "a", "logprobs": 21}, "logprobs"),
        ({"prompt": "a", "frequency_penalty": 2.5}, "frequency_penalty"),
        ({"prompt": "a", "repetition_penalty": 0}, "repetition_penalty"),
        ({"prompt": "a", "logit_bias": {"x": 2.0}}, "logit_bias"),
        ({"prompt": "a", "logit_bias": {"1": 200.0}}, "logit_bias[...]"),
        ({"prompt": "a", "suffix": "b", "echo": True}, "echo"),
        ({"prompt": "a", "temperature": 3}, "temperature"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ],
)
def test_completion_refusals_name_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _completion(**fields)
    assert refused.value.param == param


def test_completion_defaults() -> None:
    request = _completion(prompt="a", stop="x", frequency_penalty=0)
    assert request.stop_list == ["x"] and request.max_tokens is None and not request.stream
    assert not request.wants_usage_chunk


@pytest.mark.parametrize(
    ("given", "inputs"),
    [
        ("hi", ["hi"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
    ],
)
def test_embedding_input_in_every_accepted_form(given: Any, inputs: Any) -> None:
    assert _embedding(input=given).inputs == inputs


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": []}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": [1, "a"]}, "input"),
        ({"input": ["a"] * 2049}, "input"),
        ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
    ],
)
def test_embedding_refusals_name_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _embedding(**fields)
    assert refused.value.param == param
