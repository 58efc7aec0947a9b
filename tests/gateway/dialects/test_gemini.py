"""Gemini's translation, without HTTP: requests to chat completions, the SSE/array writer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cortex import protocol
from cortex.errors import InvalidRequest, Overloaded, UpstreamError
from cortex.gateway.dialects.gemini.stream import GeminiStreamWriter
from cortex.gateway.dialects.gemini.translate import (
    embed_to_openai,
    error_body,
    lower_schema,
    to_openai,
)
from cortex.protocol import gemini as gm
from cortex.protocol import openai as oa
from tests.gateway.dialects import chunk

USER = [{"role": "user", "parts": [{"text": "hi"}]}]
DECLARED = [
    {
        "functionDeclarations": [
            {
                "name": "a",
                "parameters": {"type": "OBJECT", "properties": {"x": {"type": "STRING"}}},
            },
            {"name": "b", "parametersJsonSchema": {"type": "object"}},
        ]
    }
]


def _req(**fields: Any) -> gm.GenerateContentRequest:
    body = {"contents": USER, **fields}
    return protocol.decode(json.dumps(body).encode(), gm.GenerateContentRequest)


def _chat(**fields: Any) -> oa.ChatCompletionRequest:
    return to_openai(_req(**fields), "m", vision=False, neuron=True, stream=False)


def test_lower_schema_lowers_types_at_every_level() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {"a": {"type": "ARRAY", "items": {"type": "INTEGER"}}},
    }
    assert lower_schema(schema) == {
        "type": "object",
        "properties": {"a": {"type": "array", "items": {"type": "integer"}}},
        "additionalProperties": False,
    }


def test_lower_schema_takes_proto_names_string_counts_nullable_and_ordering() -> None:
    # what google-genai sends for a dict responseSchema: proto (snake_case) field names
    schema = {
        "type": "OBJECT",
        "properties": {
            "max_length": {"type": "STRING", "max_length": "10", "nullable": True},
            "b": {"type": "ARRAY", "min_items": 1, "items": {"any_of": [{"type": "NUMBER"}]}},
        },
        "property_ordering": ["b", "max_length"],
        "required": ["b"],
    }
    lowered = lower_schema(schema)
    assert lowered == {
        "type": "object",
        "properties": {
            "b": {"type": "array", "minItems": 1, "items": {"anyOf": [{"type": "number"}]}},
            "max_length": {"type": ["string", "null"], "maxLength": 10},
        },
        "required": ["b"],
        "additionalProperties": False,
    }
    assert list(lowered["properties"]) == ["b", "max_length"]


def test_unknown_fields_are_refused_by_name() -> None:
    with pytest.raises(InvalidRequest, match="temprature"):
        _req(generationConfig={"temprature": 1})


def test_generation_config_maps_onto_sampling_fields() -> None:
    config = {
        "temperature": 0.2,
        "topP": 0.9,
        "topK": 5,
        "seed": 1,
        "maxOutputTokens": 7,
        "stopSequences": ["END"],
        "thinkingConfig": {"includeThoughts": True},
    }
    out = _chat(generationConfig=config, systemInstruction={"parts": [{"text": "be brief"}]})
    assert (out.temperature, out.top_p, out.top_k, out.seed) == (0.2, 0.9, 5, 1)
    assert (out.max_tokens, out.stop) == (7, ["END"])
    assert out.messages[0] == oa.SystemMessage(content="be brief")


@pytest.mark.parametrize(
    ("mode", "allowed", "choice", "names"),
    [
        ("AUTO", None, None, ["a", "b"]),
        ("VALIDATED", None, None, ["a", "b"]),
        ("NONE", None, "none", ["a", "b"]),
        ("ANY", None, "required", ["a", "b"]),
        ("ANY", ["b"], oa.NamedToolChoice(function=oa.ToolChoiceFunction("b")), ["b"]),
    ],
)
def test_tool_config_modes_become_tool_choice(
    mode: str, allowed: list[str] | None, choice: Any, names: list[str]
) -> None:
    config = {"functionCallingConfig": {"mode": mode, "allowedFunctionNames": allowed}}
    out = _chat(tools=DECLARED, toolConfig=config)
    assert out.tool_choice == choice
    assert [t.function.name for t in out.tools or []] == names
    first = (out.tools or [])[0].function.parameters
    if names[0] == "a":
        assert first == {
            "type": "object",
            "properties": {"x": {"type": "string"}},
            "additionalProperties": False,
        }


def test_tools_cortex_does_not_run_and_unknown_names_are_400s() -> None:
    with pytest.raises(InvalidRequest, match="google_search"):
        _chat(tools=[{"googleSearch": {}}])
    config = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["zz"]}}
    with pytest.raises(InvalidRequest, match="zz"):
        _chat(tools=DECLARED, toolConfig=config)


def test_function_calls_and_responses_become_a_paired_exchange() -> None:
    contents = [
        *USER,
        {
            "role": "model",
            "parts": [
                {"text": "Checking."},
                {"functionCall": {"name": "a", "args": {"x": "1"}}},
                {"functionCall": {"name": "b", "args": {}, "id": "given"}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "b", "response": {"ok": True}, "id": "given"}},
                {"functionResponse": {"name": "a", "response": {"v": 2}}},
                {"text": "thanks"},
            ],
        },
    ]
    out = _chat(contents=contents).messages
    assistant = out[1]
    assert isinstance(assistant, oa.AssistantMessage) and assistant.content == "Checking."
    calls = assistant.tool_calls or []
    assert [c.function.name for c in calls] == ["a", "b"] and calls[1].id == "given"
    assert out[2] == oa.ToolMessage(content='{"ok":true}', tool_call_id="given")
    assert out[3] == oa.ToolMessage(content='{"v":2}', tool_call_id=calls[0].id)
    assert out[4] == oa.UserMessage(content="thanks")


def test_json_output_becomes_response_format() -> None:
    plain = _chat(generationConfig={"responseMimeType": "application/json"})
    assert plain.response_format == oa.ResponseFormat(type="json_object")
    config = {"responseMimeType": "application/json", "responseSchema": {"type": "OBJECT"}}
    fmt = _chat(generationConfig=config).response_format
    assert fmt is not None and fmt.json_schema == oa.JsonSchemaFormat(
        name="response", schema={"type": "object"}, strict=True
    )
    with pytest.raises(InvalidRequest, match="responseMimeType"):
        _chat(generationConfig={"responseSchema": {"type": "OBJECT"}})


def test_images_need_a_vision_model() -> None:
    contents = [
        {"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "AA"}}]}
    ]
    with pytest.raises(InvalidRequest, match="does not accept images"):
        _chat(contents=contents)
    out = to_openai(_req(contents=contents), "m", vision=True, neuron=True, stream=False)
    (user,) = out.messages
    assert isinstance(user, oa.UserMessage) and isinstance(user.content, list)


def _run(writer: GeminiStreamWriter) -> bytes:
    fn = oa.ToolCallFunctionDelta
    out = writer.feed(chunk("Hi"))
    out += writer.feed(
        chunk(calls=[oa.ToolCallDelta(index=0, function=fn(name="a", arguments='{"x":'))])
    )
    out += writer.feed(chunk(calls=[oa.ToolCallDelta(index=0, function=fn(arguments='"1"}'))]))
    usage = oa.Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    return out + writer.feed(chunk(finish="length", usage=usage)) + writer.finish()


def test_json_array_stream_parses_as_one_array() -> None:
    items = json.loads(_run(GeminiStreamWriter("gemini-x", "r1", sse_framing=False)))
    assert items[0]["candidates"][0]["content"] == {"parts": [{"text": "Hi"}], "role": "model"}
    last = items[-1]
    assert last["candidates"][0]["content"]["parts"][0]["functionCall"]["args"] == {"x": "1"}
    assert last["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert last["usageMetadata"] == {
        "promptTokenCount": 3,
        "candidatesTokenCount": 2,
        "totalTokenCount": 5,
    }
    assert {i["responseId"] for i in items} == {"r1"} and items[0]["modelVersion"] == "gemini-x"


def test_sse_stream_is_one_data_event_per_response() -> None:
    raw = _run(GeminiStreamWriter("g", "r", sse_framing=True))
    events = [e for e in raw.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events) and len(events) == 2
    assert json.loads(events[0][6:])["candidates"][0]["content"]["parts"] == [{"text": "Hi"}]


def test_errors_mid_stream_close_the_array() -> None:
    writer = GeminiStreamWriter("g", "r", sse_framing=False)
    items = json.loads(writer.feed(chunk("x")) + writer.error(UpstreamError("node failed")))
    assert items[1] == {"error": {"code": 502, "message": "node failed", "status": "INTERNAL"}}
    fresh = GeminiStreamWriter("g", "r", sse_framing=False)
    assert json.loads(fresh.error(UpstreamError("boom")))[0]["error"]["message"] == "boom"


def test_error_envelope_names_google_statuses() -> None:
    body = json.loads(error_body(Overloaded("queue full")))
    assert body == {"error": {"code": 429, "message": "queue full", "status": "RESOURCE_EXHAUSTED"}}


DIM = {"outputDimensionality": 16}


def _batch(*requests: dict[str, Any]) -> list[gm.EmbedContentRequest]:
    body = json.dumps({"requests": list(requests)}).encode()
    return protocol.decode(body, gm.BatchEmbedContentsRequest).requests


def _embed(*requests: dict[str, Any]) -> Any:
    return embed_to_openai(_batch(*requests), "e", lambda name: {"alias": "e"}.get(name, name))


def test_embed_requests_become_one_embeddings_request() -> None:
    text = {"parts": [{"text": "a"}, {"text": "b"}]}
    got = _embed(
        {"model": "models/e", "content": text, "outputDimensionality": 16},
        {"model": "models/alias", "content": {"role": "user", "parts": [{"text": "c"}]}, **DIM},
    )
    assert (got.model, got.input, got.dimensions, got.truncate) == ("e", ["a\n\nb", "c"], 16, False)
    assert _embed({"content": text, "taskType": "TASK_TYPE_UNSPECIFIED"}).dimensions is None


@pytest.mark.parametrize(
    ("requests", "param"),
    [
        ([{"model": "models/other", "content": {"parts": [{"text": "a"}]}}], "model"),
        ([{"content": {"parts": [{"text": "a"}]}, "taskType": "RETRIEVAL_QUERY"}], "taskType"),
        ([{"content": {"parts": [{"text": "a"}]}, "title": "t"}], "title"),
        (
            [
                {"content": {"parts": [{"text": "a"}]}, **DIM},
                {"content": {"parts": [{"text": "b"}]}},
            ],
            "requests[1].outputDimensionality",
        ),
        (
            [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "x"}}]}}],
            "content.parts[0]",
        ),
    ],
)
def test_embed_refuses_what_the_models_cannot_honour(
    requests: list[dict[str, Any]], param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _embed(*requests)
    assert refused.value.param == param


@pytest.mark.parametrize(
    "body",
    [
        {"requests": []},
        {"requests": [{"content": {"parts": [{"text": "a"}]}, "taskType": "BOGUS"}]},
        {"requests": [{"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 0}]},
        {"requests": [{"content": "a"}]},
        {"requests": [{"content": {"parts": [{"text": "a"}]}, "bogus": 1}]},
    ],
)
def test_embed_bodies_that_do_not_decode_are_400s(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        protocol.decode(json.dumps(body).encode(), gm.BatchEmbedContentsRequest)


def _snake(body: dict[str, Any], kind: type[Any] = gm.GenerateContentRequest) -> Any:
    return gm.decode(json.dumps(body).encode(), kind)


def test_proto_field_names_are_taken_as_google_takes_them() -> None:
    camel = {
        "contents": [{"role": "user", "parts": [{"text": "hi", "thought_signature": "s"}]}],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "generationConfig": {"maxOutputTokens": 5, "responseMimeType": "application/json"},
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
        "tools": [{"functionDeclarations": [{"name": "f", "parametersJsonSchema": {}}]}],
    }
    snake = {
        "contents": [{"role": "user", "parts": [{"text": "hi", "thought_signature": "s"}]}],
        "system_instruction": {"parts": [{"text": "be brief"}]},
        "generation_config": {"max_output_tokens": 5, "response_mime_type": "application/json"},
        "tool_config": {"function_calling_config": {"mode": "ANY"}},
        "tools": [{"function_declarations": [{"name": "f", "parameters_json_schema": {}}]}],
    }
    assert _snake(snake) == _snake(camel) == _snake({**camel, "tools": snake["tools"]})
    # the keys of free-form objects (arguments, schemas) are data, never renamed
    call = {"functionCall": {"name": "f", "args": {"max_output_tokens": 1}}}
    turn = _snake({"contents": [{"role": "model", "parts": [call]}], "generation_config": {}})
    assert turn.contents[0].parts[0].function_call.args == {"max_output_tokens": 1}
    batch = {"requests": [{"content": {"parts": [{"text": "a"}]}, "output_dimensionality": 8}]}
    assert _snake(batch, gm.BatchEmbedContentsRequest).requests[0].output_dimensionality == 8


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"contents": USER, "generation_config": {}, "generationConfig": {}}, "generationConfig"),
        ({"contents": USER, "generation_config": {"temprature": 1}}, "temprature"),
        ({"contents": USER, "generation_config": {"max_output_tokens": -1}}, "maxOutputTokens"),
        ({"contents": USER, "bogus_field": 1}, "bogus_field"),
    ],
)
def test_proto_names_still_refuse_what_camel_case_refuses(body: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidRequest, match=named):
        _snake(body)
