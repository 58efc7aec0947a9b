"""Request bounds the types cannot say: nesting depth, normal floats, unsupported fields."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cortex import protocol
from cortex.errors import InvalidRequest
from cortex.protocol import anthropic, openai
from cortex.protocol.bounds import MAX_NESTING, check_nesting

USER = [{"role": "user", "content": "hi"}]


def _deep(levels: int) -> Any:
    return json.loads('{"a":' * levels + "1" + "}" * levels)


def _chat(**extra: Any) -> bytes:
    return json.dumps({"model": "m", "messages": USER, **extra}).encode()


def _messages(**extra: Any) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 8, "messages": USER, **extra}).encode()


def test_nesting_at_the_limit_passes_and_one_more_level_fails() -> None:
    check_nesting(_deep(MAX_NESTING), "x")
    with pytest.raises(ValueError, match="x is nested deeper than 64 levels"):
        check_nesting(_deep(MAX_NESTING + 1), "x")
    check_nesting([[[]]], "x", limit=3)
    check_nesting(None, "x")


@pytest.mark.parametrize(
    ("body", "kind", "param"),
    [
        (_chat(temperature=1.8e-39), openai.ChatCompletionRequest, "temperature"),
        (_chat(top_p=5e-324), openai.ChatCompletionRequest, "top_p"),
        (_chat(presence_penalty=-1e-40), openai.ChatCompletionRequest, "presence_penalty"),
        (_chat(top_logprobs=2), openai.ChatCompletionRequest, "top_logprobs"),
        (_chat(logit_bias={"word": 1}), openai.ChatCompletionRequest, "logit_bias"),
        (_messages(temperature=1e-45), anthropic.MessagesRequest, "temperature"),
        (
            _chat(tools=[{"type": "function", "function": {"name": "f", "parameters": _deep(65)}}]),
            openai.ChatCompletionRequest,
            "tools[0].function",
        ),
        (
            _messages(tools=[{"name": "f", "input_schema": _deep(500)}]),
            anthropic.MessagesRequest,
            "tools[0]",
        ),
    ],
)
def test_bad_values_are_400_naming_the_field(body: bytes, kind: type, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        protocol.decode(body, kind)
    assert caught.value.param == param and caught.value.status == 400


def test_zero_and_ordinary_values_pass() -> None:
    req = protocol.decode(
        _chat(temperature=0, top_p=1e-3, logprobs=False), openai.ChatCompletionRequest
    )
    assert req.temperature == 0 and req.top_p == 1e-3
    assert protocol.decode(_messages(temperature=0.0), anthropic.MessagesRequest).temperature == 0


def test_nesting_past_msgspecs_own_limit_is_a_400_not_a_recursion_error() -> None:
    body = b'{"model":"m","metadata":' + b'{"a":' * 5000 + b"1" + b"}" * 5001
    with pytest.raises(InvalidRequest, match="nests too deeply"):
        protocol.decode(body, openai.ChatCompletionRequest)
