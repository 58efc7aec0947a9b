"""Responses <-> chat completions translation: requests, complete responses, the event stream."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from cortex.errors import InvalidRequest, UpstreamError
from cortex.gateway.dialects.anthropic.translate import IMAGE_NOTE
from cortex.gateway.dialects.responses.stream import ResponsesStreamTranslator
from cortex.gateway.dialects.responses.translate import (
    openai_to_response,
    response_skeleton,
    responses_to_openai,
)
from cortex.protocol import openai as oa
from cortex.protocol import responses as rs
from tests.protocol.test_responses import CODEX_REQUEST


def request(**body: Any) -> rs.ResponsesRequest:
    return rs.decode_request(json.dumps({"model": "gpt-5.1-codex", **body}).encode())


def codex_later_turn() -> rs.ResponsesRequest:
    """Codex's first request plus a turn that ran two commands, as Codex resends it."""
    body = json.loads(CODEX_REQUEST)
    body["input"] += [
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi"}],
        },
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "exec_command",
            "arguments": '{"cmd":"ls"}',
        },
        {"type": "function_call", "call_id": "c2", "name": "exec_command", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "a.py"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "b"}],
        },
        {"type": "message", "role": "developer", "content": "Approval policy changed."},
    ]
    return rs.decode_request(json.dumps(body).encode())


def test_codex_conversation_becomes_chat_messages() -> None:
    chat = responses_to_openai(codex_later_turn(), "coder", vision=False)
    assert [type(m).__name__ for m in chat.messages] == [
        "SystemMessage",
        "UserMessage",
        "UserMessage",
        "AssistantMessage",
        "ToolMessage",
        "ToolMessage",
    ]
    system = chat.messages[0]
    assert isinstance(system, oa.SystemMessage) and isinstance(system.content, str)
    paragraphs = system.content.split("\n\n")
    assert paragraphs[0].startswith("You are a coding agent running in the Codex CLI")
    assert paragraphs[-1] == "Approval policy changed."  # merged in order, not left mid-chat
    assistant = chat.messages[3]
    assert isinstance(assistant, oa.AssistantMessage) and assistant.content == "Hi"
    assert [(c.id, c.function.arguments) for c in assistant.tool_calls or []] == [
        ("c1", '{"cmd":"ls"}'),
        ("c2", "{}"),
    ]
    assert [(m.tool_call_id, m.content) for m in chat.messages[4:]] == [  # type: ignore[union-attr]
        ("c1", "a.py"),
        ("c2", "b"),
    ]
    assert [t.function.name for t in chat.tools or []] == ["exec_command", "view_image"]
    assert chat.tool_choice == "auto" and chat.parallel_tool_calls is None
    assert chat.stream and chat.stream_options == oa.StreamOptions(include_usage=True)
    assert chat.model == "coder"
    # No max_output_tokens: the whole context, a ceiling the neuron caps (not its 4096 default);
    # a plain upstream keeps its own default.
    assert chat.max_tokens == 1_000_000
    assert responses_to_openai(codex_later_turn(), "up", False, neuron=False).max_tokens is None


def test_settings_map_onto_chat_fields() -> None:
    chat = responses_to_openai(
        request(
            input="hi",
            instructions="be brief",
            max_output_tokens=50,
            temperature=0.2,
            tools=[{"type": "function", "name": "f"}],
            tool_choice={"type": "function", "name": "f"},
            parallel_tool_calls=False,
            text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
        ),
        "coder",
        vision=False,
    )
    assert chat.messages == [
        oa.SystemMessage(content="be brief"),
        oa.UserMessage(content="hi"),
    ]
    assert (chat.max_tokens, chat.temperature, chat.parallel_tool_calls) == (50, 0.2, False)
    assert chat.tool_choice == oa.NamedToolChoice(function=oa.ToolChoiceFunction("f"))
    assert chat.response_format is not None and chat.response_format.type == "json_schema"
    assert chat.response_format.json_schema == oa.JsonSchemaFormat(
        name="out", schema={"type": "object"}, strict=None
    )


def test_function_output_images_follow_as_a_user_message() -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
    items = [
        {"type": "function_call", "call_id": "c1", "name": "view_image", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [image]},
        {"role": "user", "content": "what is it?"},
    ]
    chat = responses_to_openai(request(input=items), "vl", vision=True)
    assert [type(m).__name__ for m in chat.messages] == [
        "AssistantMessage",
        "ToolMessage",
        "UserMessage",
        "UserMessage",
    ]
    assert chat.messages[2] == oa.UserMessage(
        content=[oa.ImagePart(oa.ImageURL("data:image/png;base64,AAAA"))]
    )
    # A text-only model gets a note in the tool message: a screenshot tool must not end a session.
    text_only = responses_to_openai(request(input=items), "coder", vision=False)
    assert text_only.messages[1] == oa.ToolMessage(content=IMAGE_NOTE, tool_call_id="c1")
    assert len(text_only.messages) == 3
    # An image in the user's own message is refused.
    own = [{"role": "user", "content": [image]}]
    with pytest.raises(InvalidRequest, match="does not accept images") as err:
        responses_to_openai(request(input=own), "coder", vision=False)
    assert err.value.param == "input[0].content[0]"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]", "stores no items"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0]",
            "input_file",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0]",
            "file_id",
        ),
        (
            {
                "input": "x",
                "tools": [{"type": "function", "name": "f"}],
                "tool_choice": {"type": "web_search"},
            },
            "tool_choice",
            "function tools only",
        ),
    ],
)
def test_unsupported_input_is_refused(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        responses_to_openai(request(**body), "coder", vision=True)
    assert err.value.param == param and words in err.value.message


def completion(
    content: str | None, calls: int = 0, finish: oa.FinishReason = "stop"
) -> oa.ChatCompletion:
    tool_calls = [
        oa.ToolCall(id=f"call_{i}", function=oa.FunctionCall("f", f'{{"i": {i}}}'))
        for i in range(calls)
    ]
    usage = oa.Usage(
        prompt_tokens=100,
        completion_tokens=9,
        total_tokens=109,
        prompt_tokens_details=oa.PromptTokensDetails(cached_tokens=64),
    )
    message = oa.ResponseMessage(content=content, tool_calls=tool_calls or None)
    choice = oa.Choice(message=message, finish_reason=finish)
    return oa.ChatCompletion(id="c", created=0, model="coder", choices=[choice], usage=usage)


def test_completion_becomes_output_items_with_usage() -> None:
    req = request(input="hi", tools=[{"type": "function", "name": "f"}, {"type": "web_search"}])
    reply = openai_to_response(completion("Let me see.", calls=2), response_skeleton(req))
    assert reply.status == "completed" and reply.model == "gpt-5.1-codex"
    assert [type(item).__name__ for item in reply.output] == [
        "OutputMessage",
        "FunctionCallOutput",
        "FunctionCallOutput",
    ]
    calls = [item for item in reply.output if isinstance(item, rs.FunctionCallOutput)]
    assert [(c.call_id, c.arguments) for c in calls] == [
        ("call_0", '{"i": 0}'),
        ("call_1", '{"i": 1}'),
    ]
    assert reply.usage == rs.Usage(
        input_tokens=100,
        input_tokens_details=rs.InputTokensDetails(cached_tokens=64),
        output_tokens=9,
        total_tokens=109,
    )
    assert [t.name for t in reply.tools] == ["f"]  # web_search is neither run nor echoed


def test_length_finish_is_incomplete() -> None:
    reply = openai_to_response(
        completion("cut sho", finish="length"), response_skeleton(request(input="hi"))
    )
    assert reply.status == "incomplete"
    assert reply.incomplete_details == rs.IncompleteDetails("max_output_tokens")
    assert isinstance(reply.output[0], rs.OutputMessage)
    assert reply.output[0].status == "incomplete"


def chunk(
    content: str | None = None,
    call: oa.ToolCallDelta | None = None,
    finish: oa.FinishReason | None = None,
) -> oa.ChatCompletionChunk:
    delta = oa.Delta(content=content, tool_calls=[call] if call else None)
    choice = oa.ChunkChoice(delta=delta, finish_reason=finish)
    return oa.ChatCompletionChunk(id="c", created=0, model="coder", choices=[choice])


def call_delta(index: int, name: str | None = None, arguments: str = "") -> oa.ToolCallDelta:
    fn = oa.ToolCallFunctionDelta(name=name, arguments=arguments)
    return oa.ToolCallDelta(index=index, id=f"call_{index}" if name else None, function=fn)


def events(raw: bytes) -> list[dict[str, Any]]:
    frames = [f for f in raw.decode().split("\n\n") if f]
    out = []
    for frame in frames:
        name, data = frame.split("\n")
        event = msgspec.json.decode(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        out.append(event)
    return out


def test_stream_emits_openai_event_order_with_contiguous_sequence_numbers() -> None:
    t = ResponsesStreamTranslator(response_skeleton(request(input="hi")))
    raw = t.feed(chunk(content=""))  # the neuron's role chunk carries no output
    raw += t.feed(chunk(content="Hel")) + t.feed(chunk(content="lo"))
    raw += t.feed(chunk(call=call_delta(0, "f", '{"a"'))) + t.feed(
        chunk(call=call_delta(0, None, ":1}"))
    )
    usage = oa.Usage(prompt_tokens=5, completion_tokens=4, total_tokens=9)
    raw += t.feed(oa.ChatCompletionChunk(id="c", created=0, model="coder", choices=[], usage=usage))
    raw += t.finish(None)
    got = events(raw)
    assert [e["type"].removeprefix("response.") for e in got] == [
        "created",
        "in_progress",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.delta",
        "function_call_arguments.done",
        "output_item.done",
        "completed",
    ]
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    added, done = got[9]["item"], got[13]["item"]
    assert added["arguments"] == "" and added["status"] == "in_progress"
    assert (
        done["arguments"] == '{"a":1}' and done["id"] == added["id"] and done["call_id"] == "call_0"
    )
    assert got[6]["text"] == "Hello" and got[8]["item"]["content"][0]["text"] == "Hello"
    final = got[-1]["response"]
    assert final["status"] == "completed" and final["usage"]["output_tokens"] == 4
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert t.feed(chunk(content="late")) == b"" and t.finish(None) == b""


def test_stream_length_finish_ends_in_response_incomplete() -> None:
    t = ResponsesStreamTranslator(response_skeleton(request(input="hi", max_output_tokens=2)))
    got = events(t.feed(chunk(content="ab", finish="length")) + t.finish(None))
    assert got[-1]["type"] == "response.incomplete"
    assert got[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert got[-2]["item"]["status"] == "incomplete"


def test_stream_failure_ends_in_response_failed() -> None:
    t = ResponsesStreamTranslator(response_skeleton(request(input="hi")))
    raw = t.error(UpstreamError("n1 went silent mid-stream"))
    got = events(raw)
    assert [e["type"] for e in got] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]
    assert got[-1]["response"]["error"] == {
        "code": "upstream_error",
        "message": "n1 went silent mid-stream",
    }
    assert t.finish(None) == b""


def test_stream_refuses_interleaved_tool_calls() -> None:
    t = ResponsesStreamTranslator(response_skeleton(request(input="hi")))
    t.feed(chunk(call=call_delta(0, "f", "{")))
    t.feed(chunk(call=call_delta(1, "g", "{")))
    with pytest.raises(UpstreamError, match="interleaved"):
        t.feed(chunk(call=call_delta(0, None, "}")))


def test_a_silent_upstream_gets_response_in_progress_events() -> None:
    """Codex's idle timer skips SSE comments but counts any event: a prefill is kept alive with
    the dialect's own response.in_progress, numbered in sequence like every event."""
    t = ResponsesStreamTranslator(response_skeleton(request(input="hi")))
    raw = t.keepalive() + t.keepalive() + t.keepalive()
    raw += t.feed(chunk(content="ok", finish="stop")) + t.finish(None)
    got = events(raw)
    assert [e["type"] for e in got[:4]] == [
        "response.created",
        "response.in_progress",
        "response.in_progress",
        "response.in_progress",
    ]
    assert all(e["response"]["status"] == "in_progress" for e in got[1:4])
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    assert t.keepalive() == b""
