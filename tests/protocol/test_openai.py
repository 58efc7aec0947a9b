"""OpenAI wire shapes: real request/response samples decode; rejections name field, bound, value."""

from __future__ import annotations

import msgspec
import pytest

from cortex import protocol
from cortex.errors import InvalidRequest
from cortex.protocol import openai

# As the public API reference shows it, plus fields cortex ignores (logit_bias, store...).
REAL_REQUEST = b"""{
  "model": "gpt-4o",
  "messages": [
    {"role": "developer", "content": "You are a helpful assistant."},
    {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
    {"role": "user", "content": [
        {"type": "text", "text": "What's in this image?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
    ]},
    {"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_abc123", "type": "function",
         "function": {"name": "get_current_weather", "arguments": "{\\"location\\": \\"Boston\\"}"}}
    ]},
    {"role": "tool", "tool_call_id": "call_abc123", "content": "{\\"temp\\": 22}"},
    {"role": "user", "content": "Thanks", "name": "bob"}
  ],
  "tools": [{"type": "function", "function": {
      "name": "get_current_weather", "description": "Get the current weather",
      "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                     "required": ["location"]}}}],
  "tool_choice": {"type": "function", "function": {"name": "get_current_weather"}},
  "stream": true, "stream_options": {"include_usage": true},
  "temperature": 0.7, "top_p": 0.9, "max_completion_tokens": 100, "max_tokens": 50,
  "n": 1, "seed": 42, "user": "user-1234", "stop": ["\\n\\n", "END"],
  "response_format": {"type": "json_object"},
  "logit_bias": {"50256": -100}, "store": false, "frequency_penalty": 0.5
}"""

REAL_RESPONSE = b"""{
  "id": "chatcmpl-123", "object": "chat.completion", "created": 1677652288,
  "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there",
              "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
  "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21,
            "completion_tokens_details": {"reasoning_tokens": 0}}
}"""

REAL_CHUNKS = [
    b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
    b'"finish_reason":null}]}',
    b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    b'"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":'
    b'{"name":"f","arguments":""}}]},"finish_reason":null}]}',
    b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    b'"delta":{},"finish_reason":"tool_calls"}]}',
    b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}',
]


def test_real_request_decodes_every_role_and_field() -> None:
    req = protocol.decode(REAL_REQUEST, openai.ChatCompletionRequest)
    roles = [type(m).__name__ for m in req.messages]
    assert roles == [
        "DeveloperMessage",
        "SystemMessage",
        "UserMessage",
        "AssistantMessage",
        "ToolMessage",
        "UserMessage",
    ]
    assistant = req.messages[3]
    assert isinstance(assistant, openai.AssistantMessage) and assistant.tool_calls
    assert assistant.tool_calls[0].function.name == "get_current_weather"
    assert isinstance(req.tool_choice, openai.NamedToolChoice)
    assert req.stop_list == ["\n\n", "END"]
    assert req.completion_limit == 100, "max_completion_tokens wins over max_tokens"
    assert req.wants_usage_chunk
    assert req.tools and req.tools[0].function.parameters


def test_real_response_and_chunks_decode() -> None:
    resp = msgspec.json.decode(REAL_RESPONSE, type=openai.ChatCompletion)
    assert resp.choices[0].message.content == "Hello there"
    assert resp.usage.total_tokens == 21
    chunks = [msgspec.json.decode(c, type=openai.ChatCompletionChunk) for c in REAL_CHUNKS]
    assert chunks[1].choices[0].delta.tool_calls
    assert chunks[2].choices[0].finish_reason == "tool_calls"
    assert chunks[3].usage and chunks[3].usage.completion_tokens == 3


def test_chunk_encoding_omits_unset_delta_fields() -> None:
    chunk = openai.ChatCompletionChunk(
        id="c", created=1, model="m", choices=[openai.ChunkChoice(delta=openai.Delta(content="x"))]
    )
    assert b'"delta":{"content":"x"}' in msgspec.json.encode(chunk)


def _body(**overrides: object) -> bytes:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(overrides)
    return msgspec.json.encode(body)


@pytest.mark.parametrize(
    ("overrides", "param", "fragments"),
    [
        ({"temperature": 2.5}, "temperature", ["<= 2.0", "2.5"]),
        ({"temperature": -1}, "temperature", [">= 0.0", "-1"]),
        ({"top_p": 0}, "top_p", ["> 0.0", "got 0"]),
        ({"top_p": 1.5}, "top_p", ["<= 1.0", "1.5"]),
        ({"max_tokens": 0}, "max_tokens", [">= 1", "got 0"]),
        ({"max_completion_tokens": -5}, "max_completion_tokens", [">= 1", "-5"]),
        ({"n": 9}, "n", ["<= 8", "got 9"]),
        ({"messages": []}, "messages", ["length >= 1"]),
        ({"stop": ["a"] * 17}, "stop", ["length <= 16"]),
        ({"stream": "yes"}, "stream", ["bool", '"yes"']),
        (
            {"tools": [{"type": "function", "function": {"name": ""}}]},
            "tools[0].function.name",
            ["length >= 1"],
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "read"}}],
                "tool_choice": {"type": "function", "function": {"name": "write"}},
            },
            "tool_choice",
            ["'write'", "not in tools"],
        ),
        ({"tool_choice": "required"}, "tool_choice", ["needs tools"]),
    ],
)
def test_rejection_names_field_bound_and_value(
    overrides: dict[str, object], param: str, fragments: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as err:
        protocol.decode(_body(**overrides), openai.ChatCompletionRequest)
    assert err.value.param == param
    assert f"'{param}'" in err.value.message
    for fragment in fragments:
        assert fragment in err.value.message


def test_a_wrong_type_says_got_once_with_the_value() -> None:
    with pytest.raises(InvalidRequest) as err:
        protocol.decode(_body(stop=5), openai.ChatCompletionRequest)
    assert err.value.message.count("got") == 1, err.value.message
    assert err.value.message.endswith(", got 5."), err.value.message


def test_unknown_role_and_missing_fields_are_named() -> None:
    with pytest.raises(InvalidRequest) as err:
        protocol.decode(
            _body(messages=[{"role": "robot", "content": "x"}]), openai.ChatCompletionRequest
        )
    assert err.value.param == "messages[0].role"
    with pytest.raises(InvalidRequest) as err:
        protocol.decode(
            b'{"messages": [{"role": "user", "content": "x"}]}', openai.ChatCompletionRequest
        )
    assert err.value.message == "Missing required parameter: 'model'."
    with pytest.raises(InvalidRequest) as err:
        protocol.decode(
            _body(messages=[{"role": "tool", "content": "x"}]), openai.ChatCompletionRequest
        )
    assert err.value.param == "messages[0].tool_call_id"


def test_non_json_body_is_a_clear_400() -> None:
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        protocol.decode(b"{nope", openai.ChatCompletionRequest)
