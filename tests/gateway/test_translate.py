"""Anthropic <-> OpenAI translation: requests, responses and the SSE stream sequence."""

from __future__ import annotations

from typing import Any

import anthropic
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cortex.errors import InvalidRequest, Overloaded, UpstreamError
from cortex.gateway.dialects.anthropic.stream import (
    TEXT_KEEPALIVE_AFTER_S,
    AnthropicStreamTranslator,
)
from cortex.gateway.dialects.anthropic.translate import (
    IMAGE_NOTE,
    messages_to_openai,
    new_message_id,
    openai_to_messages,
)
from cortex.protocol import anthropic as an
from cortex.protocol import openai as oa

PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


def anthropic_request(**body: Any) -> an.MessagesRequest:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, **body}
    return msgspec.json.decode(msgspec.json.encode(body), type=an.MessagesRequest)


def tool_schema(i: int) -> dict[str, Any]:
    return {
        "name": f"Tool{i}",
        "description": f"Tool number {i}",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["path"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    }


def claude_code_request(**extra: Any) -> an.MessagesRequest:
    return anthropic_request(
        system=[
            {
                "type": "text",
                "text": "You are Claude Code.",
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "text", "text": "Be concise.", "cache_control": {"type": "ephemeral"}},
        ],
        tools=[tool_schema(i) for i in range(12)],
        metadata={"user_id": "user_abc"},
        stream=True,
        temperature=1,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                    {
                        "type": "text",
                        "text": "Read main.py",
                        "cache_control": {"type": "ephemeral"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should read it.", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "toolu_1", "name": "Tool0", "input": {"path": "a"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "Tool1", "input": {"path": "b"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "also check tests"},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "print(1)"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": True,
                        "content": [{"type": "text", "text": "no such file"}],
                    },
                ],
            },
        ],
        **extra,
    )


# --------------------------------------------------------------------------- requests


def test_claude_code_request_translates() -> None:
    out = messages_to_openai(claude_code_request(), "qwen3-8b", vision=False)
    assert out.model == "qwen3-8b"
    assert out.stream and out.stream_options == oa.StreamOptions(include_usage=True)
    assert (out.max_tokens, out.temperature, out.user) == (1024, 1, "user_abc")
    system, user, assistant, result1, result2, user2 = out.messages
    assert system == oa.SystemMessage(content="You are Claude Code.\n\nBe concise.")
    assert user == oa.UserMessage(content="<system-reminder>ctx</system-reminder>\n\nRead main.py")
    assert assistant == oa.AssistantMessage(
        content="Reading.",
        tool_calls=[
            oa.ToolCall(id="toolu_1", function=oa.FunctionCall("Tool0", '{"path":"a"}')),
            oa.ToolCall(id="toolu_2", function=oa.FunctionCall("Tool1", '{"path":"b"}')),
        ],
    )
    assert result1 == oa.ToolMessage(content="print(1)", tool_call_id="toolu_1")
    assert result2 == oa.ToolMessage(content="Error: no such file", tool_call_id="toolu_2")
    assert user2 == oa.UserMessage(content="also check tests")
    assert out.tools is not None and len(out.tools) == 12
    assert out.tools[3].function == oa.FunctionDef(
        name="Tool3", description="Tool number 3", parameters=tool_schema(3)["input_schema"]
    )
    assert out.tool_choice is None and out.parallel_tool_calls is None


BILLING = "x-anthropic-billing-header: cc_version=2.1.197.123; cc_entrypoint=sdk-cli; cch=%s;"


def claude_code_2_1(cch: str) -> an.MessagesRequest:
    """Claude Code 2.1's shape: billing-header block, a system message mid-conversation."""
    return anthropic_request(
        max_tokens=128_000,
        system=[
            {"type": "text", "text": BILLING % cch},
            {
                "type": "text",
                "text": "You are an agent.",
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            },
        ],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "say hi"}]},
            {"role": "system", "content": "Available agent types: claude"},
            {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
            {"role": "system", "content": [{"type": "text", "text": "Skills: none"}]},
            {"role": "user", "content": "again"},
        ],
        thinking={"type": "adaptive", "display": "omitted"},
        output_config={"effort": "medium"},
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    )


def test_system_messages_anywhere_merge_in_order_into_the_leading_system_prompt() -> None:
    out = messages_to_openai(claude_code_2_1("a1"), "m", vision=False)
    assert out.messages == [
        oa.SystemMessage(
            content="You are an agent.\n\nAvailable agent types: claude\n\nSkills: none"
        ),
        oa.UserMessage(content="say hi"),
        oa.AssistantMessage(content="hi"),
        oa.UserMessage(content="again"),
    ]
    assert out.max_tokens == 128_000, "a ceiling the neuron caps; never refused here"


def test_billing_header_is_removed_so_turns_share_a_byte_identical_prefix() -> None:
    first = messages_to_openai(claude_code_2_1("a1"), "m", vision=False)
    second = messages_to_openai(claude_code_2_1("ff"), "m", vision=False)
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
    inline = anthropic_request(
        system=(BILLING % "x") + "\nYou are an agent.",
        messages=[{"role": "user", "content": "hi"}],
    )
    assert messages_to_openai(inline, "m", vision=False).messages[0] == oa.SystemMessage(
        content="You are an agent."
    )


def test_system_message_with_a_non_text_block_is_refused() -> None:
    req = anthropic_request(
        messages=[{"role": "system", "content": [{"type": "image", "source": PNG}]}]
    )
    with pytest.raises(InvalidRequest, match=r"messages\[0\]: system content takes text"):
        messages_to_openai(req, "m", vision=True)


def test_translated_request_is_valid_openai_on_the_wire() -> None:
    out = messages_to_openai(claude_code_request(), "qwen3-8b", vision=False)
    assert msgspec.json.decode(msgspec.json.encode(out), type=oa.ChatCompletionRequest) == out


def test_sampling_and_stop_fields() -> None:
    req = anthropic_request(
        messages=[{"role": "user", "content": "hi"}],
        stop_sequences=["END", "\n\nHuman:"],
        top_p=0.9,
        top_k=40,
    )
    out = messages_to_openai(req, "m", vision=False)
    assert (out.stop, out.top_p, out.top_k) == (["END", "\n\nHuman:"], 0.9, 40)
    assert not out.stream and out.stream_options is None and out.user is None
    assert out.messages == [oa.UserMessage(content="hi")]


def test_assistant_turn_without_text_has_null_content() -> None:
    req = anthropic_request(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            },
        ]
    )
    assistant = messages_to_openai(req, "m", vision=False).messages[1]
    assert isinstance(assistant, oa.AssistantMessage)
    assert assistant.content is None and assistant.tool_calls is not None


def user_with(*blocks: dict[str, Any]) -> an.MessagesRequest:
    return anthropic_request(messages=[{"role": "user", "content": list(blocks)}])


def test_images_are_refused_for_a_text_only_model() -> None:
    req = user_with({"type": "text", "text": "what is this"}, {"type": "image", "source": PNG})
    with pytest.raises(InvalidRequest, match="model qwen3-8b does not accept images"):
        messages_to_openai(req, "qwen3-8b", vision=False)


def test_images_in_tool_results_become_a_note_for_a_text_only_model() -> None:
    result = {
        "type": "tool_result",
        "tool_use_id": "t",
        "content": [
            {"type": "text", "text": "screenshot taken"},
            {"type": "image", "source": PNG},
        ],
    }
    [tool] = messages_to_openai(user_with(result), "m", vision=False).messages
    assert tool == oa.ToolMessage(content=f"screenshot taken\n\n{IMAGE_NOTE}", tool_call_id="t")


def test_images_become_data_urls_for_a_vision_model() -> None:
    url_source = {"type": "url", "url": "https://example.com/cat.jpg"}
    req = user_with(
        {"type": "image", "source": PNG},
        {"type": "image", "source": url_source},
        {"type": "text", "text": "compare"},
    )
    [user] = messages_to_openai(req, "m", vision=True).messages
    assert user == oa.UserMessage(
        content=[
            oa.ImagePart(oa.ImageURL("data:image/png;base64,iVBORw0KGgo=")),
            oa.ImagePart(oa.ImageURL("https://example.com/cat.jpg")),
            oa.TextPart("compare"),
        ]
    )


def test_tool_result_images_follow_the_tool_message_for_a_vision_model() -> None:
    result = {
        "type": "tool_result",
        "tool_use_id": "t",
        "content": [{"type": "text", "text": "screenshot"}, {"type": "image", "source": PNG}],
    }
    tool, user = messages_to_openai(user_with(result), "m", vision=True).messages
    assert tool == oa.ToolMessage(content="screenshot", tool_call_id="t")
    assert user == oa.UserMessage(
        content=[oa.ImagePart(oa.ImageURL(f"data:image/png;base64,{PNG['data']}"))]
    )


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"type": "document", "source": {"type": "text", "data": "x"}}, "document blocks"),
        ({"type": "tool_use", "id": "t", "name": "f", "input": {}}, "tool_use blocks"),
        ({"type": "image", "source": {"type": "file", "file_id": "f1"}}, "source type 'file'"),
    ],
)
def test_unsupported_user_blocks_are_refused(block: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        messages_to_openai(user_with(block), "m", vision=True)


def test_server_tools_are_refused() -> None:
    req = anthropic_request(
        messages=[{"role": "user", "content": "hi"}],
        tools=[{"type": "web_search_20250305", "name": "web_search"}],
    )
    with pytest.raises(InvalidRequest, match="tool type 'web_search_20250305'"):
        messages_to_openai(req, "m", vision=False)


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "none"}, "none", None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        (
            {"type": "tool", "name": "Tool2"},
            oa.NamedToolChoice(function=oa.ToolChoiceFunction("Tool2")),
            None,
        ),
    ],
)
def test_tool_choice_mapping(choice: dict[str, Any], expected: Any, parallel: bool | None) -> None:
    req = anthropic_request(
        messages=[{"role": "user", "content": "hi"}], tools=[tool_schema(2)], tool_choice=choice
    )
    out = messages_to_openai(req, "m", vision=False)
    assert (out.tool_choice, out.parallel_tool_calls) == (expected, parallel)


def test_a_named_tool_choice_missing_from_tools_is_refused() -> None:
    req = anthropic_request(
        messages=[{"role": "user", "content": "hi"}],
        tools=[tool_schema(2)],
        tool_choice={"type": "tool", "name": "Tool9"},
    )
    with pytest.raises(InvalidRequest, match="'Tool9' is not in tools") as err:
        messages_to_openai(req, "m", vision=False)
    assert err.value.param == "tool_choice.name"


# --------------------------------------------------------------------------- responses


def completion(
    content: str | None,
    finish: oa.FinishReason | None,
    calls: list[oa.ToolCall] | None = None,
) -> oa.ChatCompletion:
    message = oa.ResponseMessage(content=content, tool_calls=calls)
    return oa.ChatCompletion(
        id="chatcmpl-1",
        created=0,
        model="qwen3-8b",
        choices=[oa.Choice(message=message, finish_reason=finish)],
        usage=oa.Usage(prompt_tokens=11, completion_tokens=7, total_tokens=18),
    )


def call(name: str, arguments: str) -> oa.ToolCall:
    return oa.ToolCall(id="call_x", function=oa.FunctionCall(name, arguments))


@pytest.mark.parametrize(
    ("finish", "matched", "reason", "sequence"),
    [
        ("stop", None, "end_turn", None),
        (None, None, "end_turn", None),
        ("stop", "END", "stop_sequence", "END"),
        ("length", None, "max_tokens", None),
        ("length", "END", "max_tokens", None),
        ("content_filter", None, "refusal", None),
    ],
)
def test_response_stop_reasons(
    finish: oa.FinishReason | None, matched: str | None, reason: str, sequence: str | None
) -> None:
    resp = openai_to_messages(completion("Hello", finish), "claude-sonnet-4-5", matched)
    assert (resp.stop_reason, resp.stop_sequence) == (reason, sequence)
    assert resp.content == [an.OutText("Hello")]
    assert resp.model == "claude-sonnet-4-5" and resp.id.startswith("msg_")
    assert resp.usage == an.Usage(input_tokens=11, output_tokens=7)


def test_response_usage_splits_cached_prompt_tokens() -> None:
    resp = completion("Hello", "stop")
    resp.usage.prompt_tokens_details = oa.PromptTokensDetails(cached_tokens=8)
    usage = openai_to_messages(resp, "claude-sonnet-4-5").usage
    assert usage == an.Usage(input_tokens=3, output_tokens=7, cache_read_input_tokens=8)


def test_response_with_text_and_tool_calls() -> None:
    calls = [call("get_weather", '{"city": "Paris"}'), call("now", "")]
    resp = openai_to_messages(completion("Checking.", "tool_calls", calls), "m")
    text, weather, now = resp.content
    assert text == an.OutText("Checking.")
    assert isinstance(weather, an.OutToolUse) and isinstance(now, an.OutToolUse)
    assert (weather.name, weather.input) == ("get_weather", {"city": "Paris"})
    assert (now.name, now.input) == ("now", {})
    assert weather.id.startswith("toolu_") and weather.id != now.id
    assert resp.stop_reason == "tool_use"


def test_tool_calls_with_finish_reason_stop_still_mean_tool_use() -> None:
    resp = openai_to_messages(completion(None, "stop", [call("f", "{}")]), "m")
    assert resp.stop_reason == "tool_use"
    assert [type(b) for b in resp.content] == [an.OutToolUse]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_arguments_that_are_not_an_object_are_kept_raw(arguments: str) -> None:
    [block] = openai_to_messages(
        completion(None, "tool_calls", [call("f", arguments)]), "m"
    ).content
    assert isinstance(block, an.OutToolUse) and block.input == {"_raw": arguments}


def test_response_without_choices_is_an_upstream_error() -> None:
    resp = completion("x", "stop")
    resp.choices = []
    with pytest.raises(UpstreamError):
        openai_to_messages(resp, "m")


def test_response_encodes_to_anthropic_json() -> None:
    resp = openai_to_messages(completion("Hi", "stop"), "m")
    body = msgspec.json.decode(msgspec.json.encode(resp))
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["content"] == [{"type": "text", "text": "Hi"}]
    assert body["stop_sequence"] is None
    assert msgspec.json.decode(msgspec.json.encode(resp), type=an.MessagesResponse) == resp


# --------------------------------------------------------------------------- stream

event_decoder = msgspec.json.Decoder(an.StreamEvent)


def parse_sse(data: bytes) -> list[an.StreamEvent]:
    """Split SSE bytes and decode each event into the typed union (proves the shapes)."""
    assert data.endswith(b"\n\n") or not data
    events = []
    for frame in data.decode().split("\n\n")[:-1]:
        name_line, data_line = frame.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        event = event_decoder.decode(data_line.removeprefix("data: "))
        assert name_line.removeprefix("event: ") == event.__struct_config__.tag
        events.append(event)
    return events


def chunk(
    content: str | None = None,
    tool_calls: list[oa.ToolCallDelta] | None = None,
    finish: oa.FinishReason | None = None,
) -> oa.ChatCompletionChunk:
    delta = oa.Delta(content=content, tool_calls=tool_calls)
    return oa.ChatCompletionChunk(
        id="c", created=0, model="m", choices=[oa.ChunkChoice(delta=delta, finish_reason=finish)]
    )


def usage_chunk(prompt: int, completion: int) -> oa.ChatCompletionChunk:
    usage = oa.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=0)
    return oa.ChatCompletionChunk(id="c", created=0, model="m", choices=[], usage=usage)


def tool_delta(
    index: int, name: str | None = None, arguments: str | None = None
) -> oa.ToolCallDelta:
    function = oa.ToolCallFunctionDelta(name=name, arguments=arguments)
    return oa.ToolCallDelta(index=index, id="call_1" if name else None, function=function)


def translate(
    chunks: list[oa.ChatCompletionChunk], matched_stop: str | None = None
) -> list[an.StreamEvent]:
    translator = AnthropicStreamTranslator("claude-sonnet-4-5", "msg_1", 42)
    data = b"".join(translator.feed(c) for c in chunks) + translator.finish(matched_stop)
    return parse_sse(data)


def shape(events: list[an.StreamEvent]) -> list[tuple[Any, ...]]:
    """A compact view of the sequence: (type, index, delta kind or block kind)."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        match e:
            case an.ContentBlockStart():
                out.append(("start", e.index, e.content_block.__struct_config__.tag))
            case an.ContentBlockDelta():
                out.append(("delta", e.index, e.delta.__struct_config__.tag))
            case an.ContentBlockStop():
                out.append(("stop", e.index))
            case _:
                out.append((e.__struct_config__.tag,))
    return out


def test_stream_text_only() -> None:
    events = translate(
        [chunk(""), chunk("Hel"), chunk("lo"), chunk(finish="stop"), usage_chunk(42, 2)]
    )
    assert shape(events) == [
        ("message_start",),
        ("ping",),
        ("start", 0, "text"),
        ("delta", 0, "text_delta"),
        ("delta", 0, "text_delta"),
        ("stop", 0),
        ("message_delta",),
        ("message_stop",),
    ]
    start = events[0]
    assert isinstance(start, an.MessageStart)
    assert start.message.id == "msg_1" and start.message.model == "claude-sonnet-4-5"
    assert start.message.content == [] and start.message.usage.input_tokens == 42
    deltas = [e.delta for e in events if isinstance(e, an.ContentBlockDelta)]
    assert deltas == [an.TextDelta("Hel"), an.TextDelta("lo")]
    delta = events[-2]
    assert isinstance(delta, an.MessageDelta)
    assert delta.delta == an.MessageDeltaBody(stop_reason="end_turn", stop_sequence=None)


def test_stream_text_then_two_tool_calls() -> None:
    events = translate(
        [
            chunk("Let me look."),
            chunk(tool_calls=[tool_delta(0, "get_weather", '{"city":"Paris"}')]),
            chunk(tool_calls=[tool_delta(1, "get_time", '{"tz":"UTC"}')]),
            chunk(finish="tool_calls"),
            usage_chunk(50, 30),
        ]
    )
    assert shape(events) == [
        ("message_start",),
        ("ping",),
        ("start", 0, "text"),
        ("delta", 0, "text_delta"),
        ("stop", 0),
        ("start", 1, "tool_use"),
        ("delta", 1, "input_json_delta"),
        ("stop", 1),
        ("start", 2, "tool_use"),
        ("delta", 2, "input_json_delta"),
        ("stop", 2),
        ("message_delta",),
        ("message_stop",),
    ]
    starts = [e.content_block for e in events if isinstance(e, an.ContentBlockStart)]
    _, weather, time = starts
    assert isinstance(weather, an.OutToolUse) and isinstance(time, an.OutToolUse)
    assert (weather.name, weather.input, time.name) == ("get_weather", {}, "get_time")
    assert weather.id.startswith("toolu_") and weather.id != time.id
    delta = events[-2]
    assert isinstance(delta, an.MessageDelta) and delta.delta.stop_reason == "tool_use"


def test_stream_tool_arguments_in_fragments() -> None:
    fragments = ['{"ci', 'ty": "Pa', 'ris"', "}"]
    chunks = [chunk(tool_calls=[tool_delta(0, "get_weather", "")])]
    chunks += [chunk(tool_calls=[tool_delta(0, arguments=f)]) for f in fragments]
    events = translate([*chunks, chunk(finish="tool_calls")])
    deltas = [e.delta for e in events if isinstance(e, an.ContentBlockDelta)]
    assert deltas == [an.InputJsonDelta(f) for f in fragments]
    assert {e.index for e in events if isinstance(e, an.ContentBlockDelta)} == {0}
    assert msgspec.json.decode("".join(fragments)) == {"city": "Paris"}


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        pytest.param(['{"city": ', '"Par'], '{"_raw":"{\\"city\\": \\"Par"}', id="cut-short"),
        pytest.param([], "{}", id="no-arguments"),
        pytest.param(["[1, 2]"], '{"_raw":"[1, 2]"}', id="not-an-object"),
    ],
)
def test_stream_tool_input_always_concatenates_to_a_json_object(
    arguments: list[str], expected: str
) -> None:
    chunks = [chunk(tool_calls=[tool_delta(0, "get_weather", "")])]
    chunks += [chunk(tool_calls=[tool_delta(0, arguments=a)]) for a in arguments]
    events = translate([*chunks, chunk(finish="tool_calls")])
    pieces = [e.delta for e in events if isinstance(e, an.ContentBlockDelta)]
    assert pieces == [an.InputJsonDelta(expected)]
    assert isinstance(msgspec.json.decode(expected), dict)


def test_stream_usage_lands_in_message_delta() -> None:
    events = translate([chunk("hi", finish="stop"), usage_chunk(123, 9)])
    delta = events[-2]
    assert isinstance(delta, an.MessageDelta)
    assert delta.usage == an.DeltaUsage(
        output_tokens=9, input_tokens=123, cache_read_input_tokens=0
    )


def test_cached_prompt_tokens_are_reported_as_cache_reads() -> None:
    cached = usage_chunk(123, 9)
    assert cached.usage is not None
    cached.usage.prompt_tokens_details = oa.PromptTokensDetails(cached_tokens=100)
    delta = translate([chunk("hi", finish="stop"), cached])[-2]
    assert isinstance(delta, an.MessageDelta)
    assert delta.usage == an.DeltaUsage(
        output_tokens=9, input_tokens=23, cache_read_input_tokens=100
    )


def test_stream_without_usage_reports_the_estimate() -> None:
    delta = translate([chunk("hi", finish="length")])[-2]
    assert isinstance(delta, an.MessageDelta)
    assert delta.usage == an.DeltaUsage(output_tokens=0, input_tokens=42, cache_read_input_tokens=0)
    assert delta.delta.stop_reason == "max_tokens"


def test_stream_stop_sequence() -> None:
    delta = translate([chunk("a", finish="stop")], matched_stop="END")[-2]
    assert isinstance(delta, an.MessageDelta)
    assert delta.delta == an.MessageDeltaBody(stop_reason="stop_sequence", stop_sequence="END")


def test_stream_with_no_output_is_still_a_whole_message() -> None:
    assert shape(translate([])) == [
        ("message_start",),
        ("ping",),
        ("message_delta",),
        ("message_stop",),
    ]


def test_stream_text_after_a_tool_call_opens_a_new_block() -> None:
    events = translate([chunk(tool_calls=[tool_delta(0, "f", "{}")]), chunk("done")])
    assert shape(events)[2:6] == [
        ("start", 0, "tool_use"),
        ("delta", 0, "input_json_delta"),
        ("stop", 0),
        ("start", 1, "text"),
    ]


def test_stream_error_mid_stream_ends_it() -> None:
    translator = AnthropicStreamTranslator("m", new_message_id())
    first = parse_sse(translator.feed(chunk("partial")))
    error = parse_sse(translator.error(Overloaded("too busy")))
    assert error == [an.ErrorEvent(an.ErrorDetail("overloaded_error", "too busy"))]
    assert shape(first)[-1] == ("delta", 0, "text_delta")
    assert translator.finish() == b""
    assert translator.feed(chunk("more")) == b""
    assert translator.error(Overloaded("again")) == b""


def test_stream_message_stop_is_emitted_once() -> None:
    translator = AnthropicStreamTranslator("m", "msg_1")
    translator.feed(chunk("x", finish="stop"))
    assert b"message_stop" in translator.finish()
    assert translator.finish() == b""
    assert translator.error(Overloaded("late")) == b""


def test_stream_rejects_interleaved_tool_fragments() -> None:
    translator = AnthropicStreamTranslator("m", "msg_1")
    translator.feed(chunk(tool_calls=[tool_delta(0, "f", "{")]))
    translator.feed(chunk(tool_calls=[tool_delta(1, "g", "{")]))
    with pytest.raises(UpstreamError, match="interleaved"):
        translator.feed(chunk(tool_calls=[tool_delta(0, arguments="}")]))


def test_stream_sse_framing_is_exact() -> None:
    translator = AnthropicStreamTranslator("m", "msg_1")
    data = translator.feed(chunk("hi"))
    assert data.startswith(b"event: message_start\ndata: {")
    assert b'event: ping\ndata: {"type":"ping"}\n\n' in data
    assert data.endswith(
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"hi"}}\n\n'
    )


def test_structured_outputs_and_effort_become_chat_fields() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    request = msgspec.convert(
        {
            "model": "m",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}],
            "output_config": {"effort": "max", "format": {"type": "json_schema", "schema": schema}},
            "tools": [{"name": "f", "input_schema": schema, "strict": True}],
        },
        an.MessagesRequest,
    )
    chat = messages_to_openai(request, "m", vision=False)
    assert chat.response_format is not None and chat.response_format.json_schema is not None
    assert chat.response_format.json_schema.schema == schema
    assert chat.reasoning_effort == "xhigh"
    assert chat.tools is not None and chat.tools[0].function.strict is True
    beta = msgspec.structs.replace(
        request,
        output_config=None,
        output_format=an.JsonOutputFormat(type="json_schema", schema={}),
    )
    legacy = messages_to_openai(beta, "m", vision=False)
    assert legacy.response_format is not None and legacy.reasoning_effort is None


def test_a_long_prefill_is_kept_alive_with_empty_text_deltas_after_pings() -> None:
    """Claude Code's watchdog ignores ping: past TEXT_KEEPALIVE_AFTER_S of silence the answer's
    text block opens and empty deltas (no invented text) keep the stream alive; the answer's
    first text then goes on in that block."""
    now = [0.0]
    translator = AnthropicStreamTranslator("m", "msg_1", clock=lambda: now[0])
    early = parse_sse(translator.keepalive() + translator.keepalive())
    assert shape(early) == [("message_start",), ("ping",), ("ping",)]
    now[0] = TEXT_KEEPALIVE_AFTER_S
    late = parse_sse(translator.keepalive() + translator.keepalive())
    assert shape(late) == [
        ("start", 0, "text"),
        ("delta", 0, "text_delta"),
        ("delta", 0, "text_delta"),
    ]
    assert all(e.delta.text == "" for e in late if isinstance(e, an.ContentBlockDelta))
    rest = parse_sse(translator.feed(chunk("Paris", finish="stop")) + translator.finish())
    assert shape(rest)[:2] == [("delta", 0, "text_delta"), ("stop", 0)]


def test_a_tool_call_after_a_long_prefill_follows_the_empty_text_block() -> None:
    now = [0.0]
    translator = AnthropicStreamTranslator("m", "msg_1", clock=lambda: now[0])
    now[0] = TEXT_KEEPALIVE_AFTER_S
    translator.keepalive()  # message_start
    translator.keepalive()  # the text block opens
    rest = parse_sse(translator.feed(chunk(tool_calls=[tool_delta(0, "f", "{}")])))
    assert shape(rest) == [("stop", 0), ("start", 1, "tool_use")]


async def test_the_anthropic_sdk_reads_a_stream_kept_alive_with_empty_text_deltas() -> None:
    """The shape a long prefill produces (pings, the text block opened early, empty deltas,
    then the answer) is a stream the SDK's own accumulator accepts."""
    now = [0.0]
    translator = AnthropicStreamTranslator("m", "msg_1", clock=lambda: now[0])
    body = translator.keepalive() + translator.keepalive()
    now[0] = TEXT_KEEPALIVE_AFTER_S
    body += translator.keepalive() + translator.keepalive()
    body += translator.feed(chunk("Paris", finish="stop")) + translator.finish()

    async def messages(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        client = anthropic.AsyncAnthropic(
            base_url=str(server.make_url("")), api_key="k", max_retries=0
        )
        async with client.messages.stream(
            model="m", max_tokens=8, messages=[{"role": "user", "content": "capital?"}]
        ) as stream:
            final = await stream.get_final_message()
        await client.close()
    finally:
        await server.close()
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text == "Paris" and final.stop_reason == "end_turn"  # type: ignore[union-attr]
