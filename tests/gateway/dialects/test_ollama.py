"""Ollama's translation, without HTTP: requests to chat completions, the NDJSON writer."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest

from cortex import protocol
from cortex.errors import InvalidRequest, UpstreamError
from cortex.gateway.dialects.ollama.stream import OllamaStreamWriter
from cortex.gateway.dialects.ollama.translate import (
    Clock,
    Target,
    chat_to_openai,
    embed_reply,
    embed_to_openai,
    generate_to_openai,
)
from cortex.gateway.dialects.responses.translate import WHOLE_CONTEXT
from cortex.gateway.embeddings import vectors
from cortex.protocol import ollama as ol
from cortex.protocol import openai as oa
from cortex.protocol.embeddings import Embedding, EmbeddingList, EmbeddingUsage
from tests.gateway.dialects import chunk

NEURON = Target("m", 4096, vision=False, neuron=True)


def _chat(**fields: Any) -> ol.ChatRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return protocol.decode(json.dumps(body).encode(), ol.ChatRequest)


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("10s", 10.0),
        ("10", 10.0),
        (10, 10.0),
        ("0", 0.0),
        (0, 0.0),
        ("-1", -1.0),
        (-1, -1.0),
        ("-5m", -1.0),
        ("250ms", 0.25),
    ],
)
def test_keep_alive_durations(given: ol.KeepAlive, seconds: float) -> None:
    assert ol.parse_duration(given) == seconds


@pytest.mark.parametrize("given", ["bogus", "5 m", "m", "", "1e400"])
def test_keep_alive_that_is_not_a_duration_is_refused(given: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="keep_alive"):
        ol.parse_duration(given)


def test_unknown_and_unsupported_options_are_400s_naming_them() -> None:
    with pytest.raises(InvalidRequest, match="temprature"):
        _chat(options={"temprature": 1})
    with pytest.raises(InvalidRequest, match="mirostat"):
        _chat(options={"mirostat": 2})
    assert _chat(options={"mirostat": 0, "repeat_penalty": 1.0, "num_gpu": 99}).options


def test_options_map_onto_sampling_fields() -> None:
    options = {
        "temperature": 0.5,
        "top_p": 0,
        "top_k": 7,
        "seed": 3,
        "stop": ["x"],
        "num_predict": 9,
        "presence_penalty": 0.1,
    }
    out = chat_to_openai(_chat(options=options), NEURON)
    assert (out.temperature, out.top_p, out.top_k, out.seed) == (0.5, None, 7, 3)
    assert (out.stop, out.max_tokens, out.presence_penalty) == (["x"], 9, 0.1)
    assert chat_to_openai(_chat(), NEURON).max_tokens == WHOLE_CONTEXT
    upstream = Target("m", 0, vision=True, neuron=False)
    assert chat_to_openai(_chat(options={"num_predict": -1}), upstream).max_tokens is None
    with pytest.raises(InvalidRequest, match="num_ctx 8192 exceeds"):
        chat_to_openai(_chat(options={"num_ctx": 8192}), NEURON)


def test_format_becomes_response_format() -> None:
    assert chat_to_openai(_chat(format="json"), NEURON).response_format == oa.ResponseFormat(
        type="json_object"
    )
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = chat_to_openai(_chat(format=schema), NEURON).response_format
    assert fmt is not None and fmt.type == "json_schema"
    assert fmt.json_schema == oa.JsonSchemaFormat(name="response", schema=schema, strict=True)
    assert chat_to_openai(_chat(format=""), NEURON).response_format is None


def test_system_messages_lead_and_tool_answers_pair_by_name() -> None:
    calls = [
        {"function": {"name": "a", "arguments": {"x": 1}}},
        {"function": {"name": "b", "arguments": {}}},
    ]
    messages = [
        {"role": "system", "content": "one"},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "two"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "content": "B", "tool_name": "b"},
        {"role": "tool", "content": "A", "tool_name": "a"},
    ]
    out = chat_to_openai(_chat(messages=messages), NEURON).messages
    assert out[0] == oa.SystemMessage(content="one\n\ntwo")
    assistant = out[2]
    assert isinstance(assistant, oa.AssistantMessage) and assistant.tool_calls
    ids = {c.function.name: c.id for c in assistant.tool_calls}
    assert json.loads(assistant.tool_calls[0].function.arguments) == {"x": 1}
    assert [(m.content, m.tool_call_id) for m in out[3:]] == [("B", ids["b"]), ("A", ids["a"])]  # type: ignore[union-attr]


def test_images_become_data_urls_only_for_vision_models() -> None:
    messages = [{"role": "user", "content": "look", "images": ["/9j/abc"]}]
    with pytest.raises(InvalidRequest, match="does not accept images"):
        chat_to_openai(_chat(messages=messages), NEURON)
    vision = Target("m", 0, vision=True, neuron=True)
    (user,) = chat_to_openai(_chat(messages=messages), vision).messages
    assert isinstance(user, oa.UserMessage) and isinstance(user.content, list)
    image = user.content[1]
    assert (
        isinstance(image, oa.ImagePart) and image.image_url.url == "data:image/jpeg;base64,/9j/abc"
    )


def test_generate_puts_system_first() -> None:
    req = protocol.decode(b'{"model":"m","prompt":"p","system":"s"}', ol.GenerateRequest)
    assert generate_to_openai(req, NEURON).messages == [
        oa.SystemMessage(content="s"),
        oa.UserMessage(content="p"),
    ]


@pytest.mark.parametrize("field", ["raw", "suffix", "template", "context", "think", "logprobs"])
def test_generate_refuses_what_it_cannot_honour(field: str) -> None:
    value: Any = {
        "raw": True,
        "suffix": "x",
        "template": "t",
        "context": [1],
        "think": True,
        "logprobs": True,
    }[field]
    body = json.dumps({"model": "m", "prompt": "p", field: value}).encode()
    with pytest.raises(InvalidRequest, match=field):
        protocol.decode(body, ol.GenerateRequest)


def _lines(raw: bytes) -> list[dict[str, Any]]:
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.splitlines()]


def test_ndjson_stream_sends_text_then_whole_calls_then_done() -> None:
    writer = OllamaStreamWriter("chat", "m:latest", Clock(time.perf_counter()))
    fn = oa.ToolCallFunctionDelta
    out = writer.keepalive()
    out += writer.feed(chunk("Hel"))
    out += writer.feed(chunk("lo"))
    out += writer.feed(
        chunk(calls=[oa.ToolCallDelta(index=0, id="c1", function=fn(name="f", arguments='{"a"'))])
    )
    out += writer.feed(chunk(calls=[oa.ToolCallDelta(index=0, function=fn(arguments=": 1}"))]))
    out += writer.feed(
        chunk(
            finish="tool_calls",
            usage=oa.Usage(prompt_tokens=5, completion_tokens=4, total_tokens=9),
        )
    )
    out += writer.finish()
    lines = _lines(out)
    assert [line["message"]["content"] for line in lines[:3]] == ["", "Hel", "lo"]
    assert lines[3]["message"]["tool_calls"] == [
        {"function": {"name": "f", "arguments": {"a": 1}, "index": 0}, "id": "c1"}
    ]
    final = lines[4]
    assert final["done"] is True and final["done_reason"] == "stop" and final["model"] == "m:latest"
    assert (final["prompt_eval_count"], final["eval_count"]) == (5, 4)
    assert final["eval_duration"] >= 1 and final["message"] == {"role": "assistant", "content": ""}
    assert writer.feed(chunk("late")) == b"" and writer.finish() == b""


def test_ndjson_generate_stream_and_error_line() -> None:
    writer = OllamaStreamWriter("generate", "m", Clock(time.perf_counter()))
    out = writer.feed(chunk("x")) + writer.error(UpstreamError("node n1 failed mid-stream"))
    assert _lines(out) == [
        {"model": "m", "created_at": _lines(out)[0]["created_at"], "done": False, "response": "x"},
        {"error": "node n1 failed mid-stream"},
    ]
    assert writer.finish() == b""


def _embed(**fields: Any) -> ol.EmbedRequest:
    return protocol.decode(json.dumps({"model": "m", **fields}).encode(), ol.EmbedRequest)


@pytest.mark.parametrize(
    ("fields", "inputs"),
    [
        ({"input": "one"}, ["one"]),
        ({"input": ["a", "b"]}, ["a", "b"]),
        ({"prompt": "legacy"}, ["legacy"]),
        ({}, []),
        ({"input": ""}, []),
        ({"input": []}, []),
        ({"prompt": ""}, []),
    ],
)
def test_embed_inputs_and_the_empty_ones_that_mean_load(
    fields: dict[str, Any], inputs: list[str]
) -> None:
    assert _embed(**fields).inputs == inputs


def test_embed_maps_onto_embeddings_with_truncate_only_for_neurons() -> None:
    req = _embed(input=["a", "b"], dimensions=16, options={"num_ctx": 512, "temperature": 1})
    body = embed_to_openai(req, NEURON)
    assert (body.model, body.input, body.dimensions, body.truncate) == ("m", ["a", "b"], 16, True)
    assert not embed_to_openai(_embed(input="a", truncate=False), NEURON).truncate
    upstream = Target("m", 0, vision=False, neuron=False)
    assert not embed_to_openai(req, upstream).truncate  # a plain server knows no such field
    with pytest.raises(InvalidRequest, match="num_ctx"):
        embed_to_openai(_embed(input="a", options={"num_ctx": 10_000}), NEURON)


@pytest.mark.parametrize(
    "fields",
    [
        {"input": [1, 2]},
        {"input": ["a"] * 2049},
        {"input": "a", "dimensions": 0},
        {"input": "a", "truncate": "yes"},
        {"input": "a", "keep_alive": "soon"},
        {"input": "a", "options": {"mirostat": 1}},
    ],
)
def test_embed_refuses_what_it_cannot_read(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        _embed(**fields)


def test_embed_reply_is_in_input_order_with_counts() -> None:
    answer = EmbeddingList(
        data=[Embedding(index=1, embedding=[0.0, 1.0]), Embedding(index=0, embedding=[1.0, 0.0])],
        model="m",
        usage=EmbeddingUsage(prompt_tokens=7, total_tokens=7),
    )
    reply = embed_reply(answer, "m:latest", time.perf_counter() - 0.5, 0.25)
    assert reply.embeddings == [[1.0, 0.0], [0.0, 1.0]] and reply.model == "m:latest"
    assert reply.prompt_eval_count == 7 and reply.load_duration == 250_000_000
    assert reply.total_duration >= 500_000_000
    b64 = EmbeddingList(data=[Embedding(index=0, embedding="AAAA")], model="m", usage=answer.usage)
    with pytest.raises(UpstreamError):
        vectors(b64)
