"""Anthropic wire shapes: real Messages samples decode; every stream event round-trips."""

from __future__ import annotations

import msgspec
import pytest

from cortex import protocol
from cortex.errors import InvalidRequest
from cortex.protocol import anthropic

# A Claude Code style request: system blocks with cache_control, tools, a tool_use/tool_result
# turn, thinking, metadata, plus fields cortex ignores (container, mcp_servers...).
REAL_REQUEST = b"""{
  "model": "claude-sonnet-4-5-20250929",
  "max_tokens": 32000,
  "system": [
    {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
    {"type": "text", "text": "Env: linux"}
  ],
  "messages": [
    {"role": "user", "content": "List files"},
    {"role": "assistant", "content": [
      {"type": "thinking", "thinking": "use ls", "signature": "sig"},
      {"type": "text", "text": "Running ls."},
      {"type": "tool_use", "id": "toolu_01A", "name": "Bash", "input": {"command": "ls"}}
    ]},
    {"role": "user", "content": [
      {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "a.py\\nb.py",
       "cache_control": {"type": "ephemeral"}},
      {"type": "tool_result", "tool_use_id": "toolu_01B", "is_error": true,
       "content": [{"type": "text", "text": "denied"}]},
      {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
      {"type": "text", "text": "now what?"}
    ]}
  ],
  "tools": [{"name": "Bash", "description": "Run a command",
             "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                              "required": ["command"]}}],
  "tool_choice": {"type": "auto", "disable_parallel_tool_use": false},
  "stop_sequences": ["###"], "stream": true, "temperature": 1, "top_k": 40,
  "metadata": {"user_id": "user_abc"},
  "thinking": {"type": "enabled", "budget_tokens": 1024},
  "context_management": {"edits": []}
}"""

REAL_RESPONSE = b"""{
  "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
  "model": "claude-sonnet-4-5", "content": [
    {"type": "text", "text": "I'll check."},
    {"type": "tool_use", "id": "toolu_01T", "name": "get_weather", "input": {"city": "Paris"}}
  ],
  "stop_reason": "tool_use", "stop_sequence": null,
  "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0, "service_tier": "standard"}
}"""

# The event sequence from Anthropic's streaming documentation.
REAL_EVENTS = [
    b'{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
    b'"content":[],"model":"claude","stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":25,"output_tokens":1}}}',
    b'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
    b'{"type":"ping"}',
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}',
    b'{"type":"content_block_stop","index":0}',
    b'{"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
    b'"id":"toolu_1","name":"get_weather","input":{}}}',
    b'{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
    b'"partial_json":"{\\"location\\": \\"San Fra"}}',
    b'{"type":"content_block_stop","index":1}',
    b'{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
    b'"usage":{"output_tokens":15}}',
    b'{"type":"message_stop"}',
    b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
]


def test_claude_code_request_decodes_every_block_type() -> None:
    req = protocol.decode(REAL_REQUEST, anthropic.MessagesRequest)
    assert isinstance(req.system, list) and req.system[0].cache_control
    kinds = [
        type(b).__name__ for m in req.messages if isinstance(m.content, list) for b in m.content
    ]
    assert kinds == [
        "ThinkingBlock",
        "TextBlock",
        "ToolUseBlock",
        "ToolResultBlock",
        "ToolResultBlock",
        "ImageBlock",
        "TextBlock",
    ]
    assert isinstance(req.tool_choice, anthropic.ToolChoiceAuto)
    assert req.tools and req.tools[0].input_schema["required"] == ["command"]
    assert req.metadata and req.metadata.user_id == "user_abc"


def test_real_response_decodes() -> None:
    resp = msgspec.json.decode(REAL_RESPONSE, type=anthropic.MessagesResponse)
    assert isinstance(resp.content[1], anthropic.OutToolUse)
    assert resp.stop_reason == "tool_use" and resp.usage.input_tokens == 2095


@pytest.mark.parametrize("raw", REAL_EVENTS)
def test_every_stream_event_round_trips(raw: bytes) -> None:
    event = msgspec.json.decode(raw, type=anthropic.StreamEvent)
    assert _contains(msgspec.json.decode(msgspec.json.encode(event)), msgspec.json.decode(raw))


def _contains(big: object, small: object) -> bool:
    """Everything in ``small`` is in ``big`` with the same value (big may add zeroed fields)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            k in big and _contains(big[k], v) for k, v in small.items()
        )
    return big == small


def test_count_tokens_shapes() -> None:
    req = protocol.decode(
        b'{"model":"m","messages":[{"role":"user","content":"hi"}],"system":"s"}',
        anthropic.CountTokensRequest,
    )
    assert req.system == "s"
    assert msgspec.json.encode(anthropic.CountTokensResponse(12)) == b'{"input_tokens":12}'


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b'{"model":"m","messages":[]}', "max_tokens", "Missing required parameter"),
        (b'{"model":"m","max_tokens":0,"messages":[]}', "max_tokens", ">= 1"),
        (b'{"model":"m","max_tokens":5,"temperature":1.5,"messages":[]}', "temperature", "<= 1.0"),
        (
            b'{"model":"m","max_tokens":5,"messages":[{"role":"tool","content":"x"}]}',
            "messages[0].role",
            "Invalid enum value 'tool'",
        ),
        (
            b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"video"}]}]}',
            "messages[0].content[0].type",
            "video",
        ),
    ],
)
def test_rejections_name_the_field(body: bytes, param: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        protocol.decode(body, anthropic.MessagesRequest)
    assert err.value.param == param
    assert fragment in err.value.message
