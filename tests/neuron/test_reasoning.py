"""Reasoning controls reach the chat template or are refused by name: ``reasoning_effort``,
vLLM's ``chat_template_kwargs`` and ``thinking_token_budget`` (issue 21)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from cortex.errors import InvalidRequest
from cortex.neuron.prompt import template_variables
from cortex.protocol import openai
from tests.neuron.fakes import FakeHarness
from tests.neuron.test_app import (  # noqa: F401  (fixtures)
    Client,
    MakeClient,
    chat,
    harness,
    load,
    model_of,
    no_gpus,
    root,
    start,
)

QWEN3 = frozenset({"enable_thinking"})
GPT_OSS = frozenset({"reasoning_effort"})


def _request(**fields: Any) -> openai.ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return msgspec.convert(body, openai.ChatCompletionRequest)


@pytest.mark.parametrize(
    ("effort", "readable", "expected"),
    [
        ("none", QWEN3, {"enable_thinking": False}),
        ("minimal", QWEN3, {"enable_thinking": False}),
        ("high", QWEN3, {"enable_thinking": True}),
        ("low", GPT_OSS, {"reasoning_effort": "low"}),
        ("high", frozenset(), {}),  # a template without a switch: no effect
    ],
)
def test_reasoning_effort_sets_the_switches_the_template_reads(
    effort: str, readable: frozenset[str], expected: dict[str, Any]
) -> None:
    assert template_variables(_request(reasoning_effort=effort), readable, "m") == expected


def test_chat_template_kwargs_go_over_the_effort_and_unread_keys_are_refused() -> None:
    request = _request(reasoning_effort="none", chat_template_kwargs={"enable_thinking": True})
    assert template_variables(request, QWEN3, "m") == {"enable_thinking": True}
    with pytest.raises(InvalidRequest) as err:
        template_variables(_request(chat_template_kwargs={"thinking": True}), QWEN3, "m")
    assert err.value.param == "chat_template_kwargs.thinking"
    assert "enable_thinking" in err.value.message


@pytest.fixture
async def client(start: MakeClient) -> Client:  # noqa: F811
    client = await start()
    await load(client)
    return client


async def test_the_variables_reach_encode_chat(client: Client, harness: FakeHarness) -> None:  # noqa: F811
    code, _ = await chat(client, "say:a", reasoning_effort="none")
    assert code == 200
    assert model_of(harness).variables == {"enable_thinking": False}
    code, body = await chat(client, "say:a", chat_template_kwargs={"bogus": 1})
    assert code == 400 and body["error"]["param"] == "chat_template_kwargs.bogus"


async def test_a_thinking_budget_needs_a_harness_that_enforces_it(client: Client) -> None:
    code, body = await chat(client, "say:a", thinking_token_budget=64)
    assert code == 400 and body["error"]["param"] == "thinking_token_budget"
