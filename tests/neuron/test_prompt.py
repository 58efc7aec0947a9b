from __future__ import annotations

import msgspec
import pytest

from cortex.errors import ContextLengthExceeded, InvalidRequest
from cortex.neuron import prompt
from cortex.protocol import openai


def request(**fields: object) -> openai.ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return msgspec.convert(body, openai.ChatCompletionRequest)


def messages(*raw: dict[str, object]) -> list[openai.Message]:
    return request(messages=list(raw)).messages


def test_text_parts_are_joined_and_developer_becomes_system() -> None:
    got = prompt.template_messages(
        messages(
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ),
        vision=False,
    )
    assert got == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a\nb"}]


def test_assistant_tool_call_arguments_become_a_dict_and_tool_results_keep_their_id() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    got = prompt.template_messages(
        messages(
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        ),
        vision=False,
    )
    assert got[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
        ],
    }
    assert got[2] == {"role": "tool", "content": "42", "tool_call_id": "call_1"}


def test_bad_tool_call_arguments_name_the_field() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{nope"}}
    with pytest.raises(InvalidRequest) as info:
        prompt.template_messages(
            messages({"role": "assistant", "tool_calls": [call]}), vision=False
        )
    assert info.value.param == "messages[0].tool_calls[0].function.arguments"


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}


def test_images_are_refused_without_vision() -> None:
    with pytest.raises(InvalidRequest, match="image_url") as info:
        prompt.template_messages(
            messages({"role": "user", "content": [{"type": "text", "text": "x"}, IMAGE]}),
            vision=False,
        )
    assert info.value.param == "messages[0].content[1]"


def test_images_pass_as_multimodal_parts_with_vision() -> None:
    got = prompt.template_messages(
        messages({"role": "user", "content": [IMAGE, {"type": "text", "text": "what?"}]}),
        vision=True,
    )
    assert got[0]["content"] == [
        {"type": "image", "url": "data:image/png;base64,AA"},
        {"type": "text", "text": "what?"},
    ]


def test_a_prompt_that_fills_the_context_is_refused_in_openais_words() -> None:
    with pytest.raises(ContextLengthExceeded) as info:
        prompt.completion_budget(128, 50, 128)
    assert info.value.message == (
        "This model's maximum context length is 128 tokens. However, your messages resulted in "
        "128 tokens. Please reduce the length of the messages."
    )
    assert info.value.code == "context_length_exceeded"


@pytest.mark.parametrize(
    ("prompt_tokens", "requested", "context", "budget"),
    [
        pytest.param(100, 50, 128, 28, id="max-tokens-is-a-ceiling"),
        pytest.param(100, 128_000, 4096, 3996, id="claude-code-128k-on-a-4k-model"),
        pytest.param(127, 10, 128, 1, id="one-token-left"),
        pytest.param(100, 20, 128, 20, id="fits-as-asked"),
        pytest.param(100, None, 128, 28, id="default-is-what-is-left"),
        pytest.param(100, None, 100_000, prompt.DEFAULT_MAX_TOKENS, id="default-is-capped"),
        pytest.param(100, None, 0, prompt.DEFAULT_MAX_TOKENS, id="unknown-context-default"),
        pytest.param(100, 9999, 0, 9999, id="unknown-context-as-asked"),
    ],
)
def test_budget_is_what_was_asked_capped_by_the_context(
    prompt_tokens: int, requested: int | None, context: int, budget: int
) -> None:
    assert prompt.completion_budget(prompt_tokens, requested, context) == budget


@pytest.mark.parametrize(
    ("requested", "default", "context", "budget"),
    [
        pytest.param(None, 300, 8192, 300, id="model-default-without-max-tokens"),
        pytest.param(None, 300, 250, 150, id="model-default-capped-by-context"),
        pytest.param(2000, 300, 8192, 2000, id="max-tokens-beats-model-default"),
        pytest.param(None, 0, 8192, 1024, id="zero-means-the-global-default"),
    ],
)
def test_model_default_applies_only_without_max_tokens(
    requested: int | None, default: int, context: int, budget: int
) -> None:
    assert prompt.completion_budget(100, requested, context, default) == budget


def test_sampling_defaults_follow_openai() -> None:
    params = prompt.sampling_params(request(), 10)
    assert (params.temperature, params.top_p, params.top_k, params.seed) == (1.0, 1.0, 0, None)
    greedy = prompt.sampling_params(request(temperature=0, top_p=0.5, seed=3), 10)
    assert (greedy.temperature, greedy.top_p, greedy.seed) == (0.0, 0.5, 3)
