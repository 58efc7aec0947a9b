"""Reasoning controls across dialects: Anthropic ``thinking`` and Responses ``reasoning.effort``
become chat's ``reasoning_effort`` and ``thinking_token_budget``."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cortex.gateway.dialects.anthropic.translate import messages_to_openai
from cortex.gateway.dialects.responses.translate import responses_to_openai
from cortex.protocol import anthropic as an
from cortex.protocol import responses as rs


def _anthropic(**fields: Any) -> an.MessagesRequest:
    body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    return msgspec.convert(body | fields, an.MessagesRequest)


@pytest.mark.parametrize(
    ("thinking", "effort", "budget"),
    [
        (None, None, None),
        ({"type": "disabled"}, "none", None),
        ({"type": "enabled", "budget_tokens": 2048}, "medium", 2048),
        ({"type": "adaptive"}, None, None),  # the template's default
        ({"type": "something-new"}, None, None),
    ],
)
def test_anthropic_thinking_becomes_effort_and_budget(
    thinking: dict[str, Any] | None, effort: str | None, budget: int | None
) -> None:
    request = _anthropic(thinking=thinking) if thinking else _anthropic()
    chat = messages_to_openai(request, "m", vision=False)
    assert (chat.reasoning_effort, chat.thinking_token_budget) == (effort, budget)


@pytest.mark.parametrize(("given", "effort"), [("low", "low"), ("ultra", None), (None, None)])
def test_responses_reasoning_effort_becomes_chats(given: str | None, effort: str | None) -> None:
    body: dict[str, Any] = {"model": "m", "input": "hi"}
    if given is not None:
        body["reasoning"] = {"effort": given, "summary": "auto"}
    chat = responses_to_openai(msgspec.convert(body, rs.ResponsesRequest), "m", vision=False)
    assert chat.reasoning_effort == effort
