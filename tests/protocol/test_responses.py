"""Responses API wire shapes: a real Codex request decodes; refusals name their field."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from cortex import protocol
from cortex.errors import InvalidRequest
from cortex.protocol import responses as rs

# Codex CLI 0.171's first request of `codex exec "Say hi"`, captured at the gateway, with its
# long instruction texts and most of its 12 tools cut short (shapes and fields unchanged).
CODEX_REQUEST = (Path(__file__).parent / "codex_request.json").read_bytes()
DEEP: dict[str, object] = {}
for _ in range(80):
    DEEP = {"items": DEEP}


def test_codex_request_decodes() -> None:
    req = rs.decode_request(CODEX_REQUEST)
    assert req.stream and req.store is False and req.parallel_tool_calls
    assert [(type(i).__name__, getattr(i, "role", None)) for i in req.input] == [
        ("MessageItem", "developer"),
        ("MessageItem", "developer"),
        ("MessageItem", "user"),
        ("MessageItem", "user"),
    ]
    assert [t.type for t in req.tools or []] == ["function", "function", "namespace", "web_search"]
    assert [t.name for t in req.function_tools] == ["exec_command", "view_image"]
    assert req.prompt_cache_key == json.loads(CODEX_REQUEST)["prompt_cache_key"]
    assert req.reasoning is not None and req.reasoning.summary == "auto"


def test_easy_messages_need_no_type_tag() -> None:
    body = b'{"model": "m", "input": [{"role": "user", "content": "hi"}]}'
    req = rs.decode_request(body)
    assert req.input == [rs.MessageItem(role="user", content="hi")]


def test_later_turn_items_decode() -> None:
    items = [
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
        {"type": "function_call", "call_id": "call_1", "name": "exec_command", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]},
    ]
    req = rs.decode_request(json.dumps({"model": "m", "input": items}).encode())
    assert [type(i) for i in req.input] == [
        rs.ReasoningItem,
        rs.FunctionCallItem,
        rs.FunctionCallOutputItem,
        rs.MessageItem,
    ]


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"store": True}, "store", "stores no responses"),
        ({"previous_response_id": "resp_1"}, "previous_response_id", "whole conversation"),
        ({"conversation": "conv_1"}, "conversation", "whole conversation"),
        ({"background": True}, "background", "not supported"),
        ({"input": [{"type": "web_search_call", "id": "ws"}]}, "input[0].type", "function tools"),
        ({"input": [{"content": "no role"}]}, "input[0].role", "Missing required"),
        ({"tools": [{"type": "function"}]}, "tools[0]", "needs a name"),
        ({"tools": [{"type": "function", "name": "f" * 129}]}, "tools[0].name", "<= 128"),
        ({"max_output_tokens": 0}, "max_output_tokens", ">= 1"),
        ({"temperature": 1e-40}, "temperature", "magnitude"),
        (
            {"tools": [{"type": "function", "name": "f", "parameters": DEEP}]},
            "tools[0]",
            "nested deeper",
        ),
    ],
)
def test_refusals_name_the_field(extra: dict[str, object], param: str, words: str) -> None:
    body = json.dumps({"model": "m", "input": "hi", **extra}).encode()
    with pytest.raises(InvalidRequest) as err:
        rs.decode_request(body)
    assert err.value.param == param and words in err.value.message


def test_events_are_named_sse_frames_with_their_sequence_number() -> None:
    event = rs.OutputTextDelta(
        sequence_number=4, item_id="msg_1", output_index=0, content_index=0, delta="hi"
    )
    frame = protocol.encode_events([event])
    name, data = frame.decode().removesuffix("\n\n").split("\n")
    assert name == "event: response.output_text.delta"
    decoded = msgspec.json.decode(data.removeprefix("data: "))
    assert decoded["type"] == "response.output_text.delta" and decoded["sequence_number"] == 4


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe{",
        b"[" * 100_000,
        b'{"model": "m"}',
        b'{"model": "m", "input": [5]}',
        b'{"model": "m", "input": [{"type": [1]}]}',
        b'{"model": "m", "input": [{"role": "user", "content": [{"type": "x"}]}]}',
        b'{"model": "m", "input": "x", "client_metadata": '
        + b'{"a":' * 5000
        + b"1"
        + b"}" * 5000
        + b"}",
    ],
    ids=["empty", "not-utf8", "brackets", "no-input", "item-int", "type-list", "part", "deep"],
)
def test_hostile_bodies_are_invalid_requests(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        rs.decode_request(body)
