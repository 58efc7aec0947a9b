"""Ollama's /api/chat and /api/generate <-> chat completions: requests and whole answers.

Pure apart from the clock; input the local models cannot honour raises ``InvalidRequest``
naming the field. Choices not forced by either API:
- Every system message (and /api/generate's ``system``) joins one leading system message,
  paragraphs in order: chat templates take a system message only first (as the Anthropic and
  Responses translators do).
- Ollama's tool calls carry no ids: calls get fresh ids, and tool messages are paired with
  them by ``tool_name`` (dialects/calls.py).
- ``images`` (bare base64) become data URLs, the type read from the first bytes; a model
  without ``vision`` in models.toml refuses them.
- ``format`` "json" is ``response_format`` json_object, a schema is json_schema (strict);
  ``options.num_predict`` is ``max_tokens`` (-1/-2, or absent: up to the context, Ollama's
  default; a plain upstream keeps its own); ``num_ctx`` above the model's context is refused.
- Arguments of a tool call that are not a JSON object come back as ``{"_raw": "..."}``
  (translate.tool_input), since Ollama's clients expect an object.
- /api/embed is /v1/embeddings: ``truncate`` (Ollama's default true) is the neuron's
  ``truncate`` extension; a plain upstream gets the inputs as they are (its own limits apply).
  ``options`` other than ``num_ctx`` (checked against the context) do not bear on a vector.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TypedDict

import msgspec

from cortex.errors import InvalidRequest, UpstreamError
from cortex.gateway.dialects.anthropic.translate import tool_input
from cortex.gateway.dialects.calls import Pairing, new_call_id
from cortex.gateway.dialects.responses.translate import WHOLE_CONTEXT
from cortex.gateway.embeddings import vectors
from cortex.protocol import ollama as ol
from cortex.protocol import openai as oa
from cortex.protocol.embeddings import EmbeddingList, EmbeddingRequest

_encoder = msgspec.json.Encoder()
_IMAGE_TYPES = {
    "iVBOR": "image/png",
    "/9j/": "image/jpeg",
    "R0lGOD": "image/gif",
    "UklGR": "image/webp",
}


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- requests


class Target:
    """What the translation needs to know about the model that serves the request."""

    def __init__(self, model_id: str, context_length: int, vision: bool, neuron: bool) -> None:
        self.model_id = model_id
        self.context_length = context_length  # 0: unknown
        self.vision = vision
        self.neuron = neuron  # a cortex neuron (else a plain upstream)


def chat_to_openai(req: ol.ChatRequest, target: Target) -> oa.ChatCompletionRequest:
    system: list[str] = []
    messages: list[oa.Message] = []
    pairing = Pairing()
    for i, message in enumerate(req.messages):
        where = f"messages[{i}]"
        match message.role:
            case "system":
                system.append(message.content)
            case "user":
                content = _user_content(message.content, message.images, target, where)
                messages.append(oa.UserMessage(content=content))
            case "assistant":
                _no_images(message, where)
                calls = [_call(c) for c in message.tool_calls or []]
                pairing.calls([(c.id, c.function.name) for c in calls])
                text = message.content if message.content or not calls else None
                messages.append(oa.AssistantMessage(content=text, tool_calls=calls or None))
            case "tool":
                _no_images(message, where)
                call_id = message.tool_call_id or pairing.answer(message.tool_name)
                messages.append(oa.ToolMessage(content=message.content, tool_call_id=call_id))
    return _request(req, target, _with_system(system, messages), req.tools)


def generate_to_openai(req: ol.GenerateRequest, target: Target) -> oa.ChatCompletionRequest:
    content = _user_content(req.prompt, req.images, target, "")
    messages = _with_system([req.system] if req.system else [], [oa.UserMessage(content=content)])
    return _request(req, target, messages, None)


def _with_system(system: list[str], messages: list[oa.Message]) -> list[oa.Message]:
    text = "\n\n".join(t for t in system if t)
    return [oa.SystemMessage(content=text), *messages] if text else messages


def _request(
    req: ol.ChatRequest | ol.GenerateRequest,
    target: Target,
    messages: list[oa.Message],
    tools: list[oa.Tool] | None,
) -> oa.ChatCompletionRequest:
    if not messages:
        raise InvalidRequest("messages must not be empty", param="messages")
    opts = req.options or ol.Options()
    _check_context(opts.num_ctx, target)
    return oa.ChatCompletionRequest(
        model=target.model_id,
        messages=messages,
        stream=req.stream,
        stream_options=oa.StreamOptions(include_usage=True) if req.stream else None,
        temperature=opts.temperature,
        top_p=opts.top_p or None,  # Ollama's 0 means "off"; OpenAI's range starts above 0
        top_k=opts.top_k,
        seed=opts.seed,
        max_tokens=_max_tokens(opts.num_predict, target),
        stop=opts.stop or None,
        presence_penalty=opts.presence_penalty,
        frequency_penalty=opts.frequency_penalty,
        tools=tools or None,
        response_format=response_format(req.format),
    )


def _check_context(num_ctx: int | None, target: Target) -> None:
    if num_ctx is not None and 0 < target.context_length < num_ctx:
        raise InvalidRequest(
            f"options.num_ctx {num_ctx} exceeds model {target.model_id}'s context of "
            f"{target.context_length} tokens (context_length in models.toml)",
            param="options.num_ctx",
        )


def _max_tokens(num_predict: int | None, target: Target) -> int | None:
    if num_predict is None or num_predict < 0:
        return WHOLE_CONTEXT if target.neuron else None
    if num_predict == 0:
        raise InvalidRequest(
            "options.num_predict 0 asks for no tokens; send a positive number or -1",
            param="options.num_predict",
        )
    return num_predict


def response_format(fmt: ol.Format | None) -> oa.ResponseFormat | None:
    """Ollama's ``format`` as OpenAI's ``response_format``."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return oa.ResponseFormat(type="json_object")
    assert isinstance(fmt, dict)
    schema = oa.JsonSchemaFormat(name="response", schema=fmt, strict=True)
    return oa.ResponseFormat(type="json_schema", json_schema=schema)


def _user_content(text: str, images: list[str] | None, target: Target, where: str) -> oa.Content:
    if not images:
        return text
    param = f"{where}.images" if where else "images"
    if not target.vision:
        raise InvalidRequest(f"model {target.model_id} does not accept images", param=param)
    parts: list[oa.ContentPart] = [oa.TextPart(text)] if text else []
    for image in images:
        kind = next((t for p, t in _IMAGE_TYPES.items() if image.startswith(p)), "image/png")
        parts.append(oa.ImagePart(oa.ImageURL(f"data:{kind};base64,{image}")))
    return parts


def _no_images(message: ol.Message, where: str) -> None:
    if message.images:
        raise InvalidRequest(
            f"images are only accepted in user messages, not {message.role}",
            param=f"{where}.images",
        )


def _call(call: ol.ToolCall) -> oa.ToolCall:
    arguments = _encoder.encode(call.function.arguments).decode()
    return oa.ToolCall(
        id=call.id or new_call_id(), function=oa.FunctionCall(call.function.name, arguments)
    )


# --------------------------------------------------------------------------- answers


def done_reason(finish: oa.FinishReason | None) -> ol.DoneReason:
    return "length" if finish == "length" else "stop"


def tool_calls_out(calls: list[oa.ToolCall]) -> list[ol.OutToolCall]:
    return [
        ol.OutToolCall(
            id=call.id,
            function=ol.ToolCallFunction(
                name=call.function.name, arguments=tool_input(call.function.arguments), index=i
            ),
        )
        for i, call in enumerate(calls)
    ]


class Final(TypedDict):
    """The fields of the final /api/chat or /api/generate object besides the content."""

    model: str
    created_at: str
    done: bool
    done_reason: ol.DoneReason
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


class Clock:
    """Ollama's statistics for one answer: durations in nanoseconds since ``started``
    (``time.perf_counter``), split at the first token (a whole answer has no split: all of
    it counts as evaluation). ``eval_duration`` is at least 1 ns, since clients divide by it.
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self.first: float | None = None

    def token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def final(self, model: str, finish: oa.FinishReason | None, usage: oa.Usage | None) -> Final:
        """The final object's fields, for ChatChunk/GenerateChunk(**...)."""
        end = time.perf_counter()
        first = self.first if self.first is not None else self.started
        return {
            "model": model,
            "created_at": now_rfc3339(),
            "done": True,
            "done_reason": done_reason(finish),
            "total_duration": _ns(end - self.started),
            "load_duration": 0,
            "prompt_eval_count": usage.prompt_tokens if usage else 0,
            "prompt_eval_duration": _ns(first - self.started),
            "eval_count": usage.completion_tokens if usage else 0,
            "eval_duration": max(1, _ns(end - first)),
        }


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _only_choice(resp: oa.ChatCompletion) -> oa.Choice:
    if not resp.choices:
        raise UpstreamError("upstream returned no choices")
    return resp.choices[0]


def chat_reply(resp: oa.ChatCompletion, model: str, clock: Clock) -> ol.ChatChunk:
    """The whole non-stream /api/chat answer."""
    choice = _only_choice(resp)
    calls = choice.message.tool_calls or []
    message = ol.OutMessage(
        role="assistant",
        content=choice.message.content or "",
        tool_calls=tool_calls_out(calls) or None,
    )
    return ol.ChatChunk(message=message, **clock.final(model, choice.finish_reason, resp.usage))


def generate_reply(resp: oa.ChatCompletion, model: str, clock: Clock) -> ol.GenerateChunk:
    """The whole non-stream /api/generate answer."""
    choice = _only_choice(resp)
    return ol.GenerateChunk(
        response=choice.message.content or "",
        **clock.final(model, choice.finish_reason, resp.usage),
    )


# --------------------------------------------------------------------------- embeddings


def embed_to_openai(req: ol.EmbedRequest, target: Target) -> EmbeddingRequest:
    """/api/embed (or /api/embeddings) with something to embed as /v1/embeddings."""
    _check_context((req.options or ol.Options()).num_ctx, target)
    return EmbeddingRequest(
        model=target.model_id,
        input=list[str | int | list[int]](req.inputs),
        dimensions=req.dimensions,
        truncate=req.truncate and target.neuron,
    )


def embed_reply(resp: EmbeddingList, model: str, started: float, load_s: float) -> ol.EmbedResponse:
    """/api/embed's answer; ``load_s`` is the time before a node took the request (a load)."""
    return ol.EmbedResponse(
        model=model,
        embeddings=vectors(resp),
        total_duration=_ns(time.perf_counter() - started),
        load_duration=_ns(load_s),
        prompt_eval_count=resp.usage.prompt_tokens,
    )
