"""Gemini's generateContent <-> chat completions: the request, and whole answers.

Pure apart from fresh ids; input the local models cannot honour raises ``InvalidRequest``
naming the field. Choices not forced by either API:
- ``systemInstruction`` (and any ``system`` content) becomes one leading system message.
- A content's text parts join with a blank line; ``functionCall`` parts of a ``model`` turn
  become its tool calls; ``functionResponse`` parts become tool messages (the response object
  as JSON), paired with their call by ``id`` or else by name (dialects/calls.py); ``thought``
  parts (another model's reasoning) are dropped. ``inlineData`` images become data URLs for a
  model with ``vision``; any other inline or file data is refused.
- ``toolConfig`` modes: AUTO and VALIDATED are ``auto``, ANY is ``required`` (one allowed name:
  that tool by name), NONE is ``none``; ``allowedFunctionNames`` narrows the tools sent.
  Tools other than ``functionDeclarations`` (Google Search, code execution) are refused.
- Google's OpenAPI-subset schemas (``"type": "OBJECT"``) are lowered to JSON schema types.
- ``responseMimeType`` application/json is ``response_format`` json_object, or json_schema with
  ``responseJsonSchema``/``responseSchema``. ``thinkingConfig`` is accepted: the local models
  expose no thoughts, so none are returned and no budget applies.
- An absent ``maxOutputTokens`` means up to the context for a neuron (as for Responses).
- ``:embedContent`` and ``:batchEmbedContents`` are one /v1/embeddings request (a content's
  text parts joined as above); ``taskType`` and ``title`` are refused (no per-task prompts);
  an input longer than the model's context is refused, not truncated.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import msgspec

from cortex.errors import CortexError, InvalidRequest, UpstreamError
from cortex.gateway.dialects.anthropic.translate import tool_input
from cortex.gateway.dialects.calls import Pairing, new_call_id
from cortex.gateway.dialects.responses.translate import WHOLE_CONTEXT
from cortex.protocol import gemini as gm
from cortex.protocol import openai as oa
from cortex.protocol.embeddings import EmbeddingRequest

_encoder = msgspec.json.Encoder()


# Google's status names for the HTTP statuses cortex answers with.
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    507: "RESOURCE_EXHAUSTED",
}


def error_body(err: CortexError) -> bytes:
    """Google's error envelope: ``{"error": {"code", "message", "status"}}``."""
    status = _STATUS.get(err.status, "INTERNAL")
    return _encoder.encode(gm.ErrorBody(gm.ErrorDetail(err.status, err.message, status)))


def new_response_id() -> str:
    return secrets.token_urlsafe(16)


# --------------------------------------------------------------------------- request


def to_openai(
    req: gm.GenerateContentRequest, model_id: str, vision: bool, neuron: bool, stream: bool
) -> oa.ChatCompletionRequest:
    """The chat request for a generateContent one; ``neuron``: a cortex neuron serves it."""
    system: list[str] = []
    if req.system_instruction is not None:
        system.append(_text(req.system_instruction.parts, "systemInstruction"))
    messages: list[oa.Message] = []
    pairing = Pairing()
    for i, content in enumerate(req.contents):
        where = f"contents[{i}]"
        if content.role == "system":
            system.append(_text(content.parts, where))
        elif content.role == "model":
            messages.append(_model_turn(content, pairing, where))
        else:
            messages += _user_turn(content, pairing, model_id, vision, where)
    if system and any(system):
        messages.insert(0, oa.SystemMessage(content="\n\n".join(t for t in system if t)))
    if not messages:
        raise InvalidRequest("contents must not be empty", param="contents")
    gen = req.generation_config or gm.GenerationConfig()
    tools, choice = _tools(req.tools, req.tool_config)
    return oa.ChatCompletionRequest(
        model=model_id,
        messages=messages,
        stream=stream,
        stream_options=oa.StreamOptions(include_usage=True) if stream else None,
        temperature=gen.temperature,
        top_p=gen.top_p,
        top_k=gen.top_k,
        seed=gen.seed,
        max_tokens=gen.max_output_tokens or (WHOLE_CONTEXT if neuron else None),
        stop=gen.stop_sequences or None,
        presence_penalty=gen.presence_penalty,
        frequency_penalty=gen.frequency_penalty,
        tools=tools or None,
        tool_choice=choice if tools else None,
        response_format=_response_format(gen),
    )


def _text(parts: list[gm.Part], where: str) -> str:
    texts = []
    for j, part in enumerate(parts):
        if part.thought:
            continue
        if part.text is None:
            raise InvalidRequest("only text parts are accepted here", param=f"{where}.parts[{j}]")
        texts.append(part.text)
    return "\n\n".join(texts)


def _model_turn(content: gm.Content, pairing: Pairing, where: str) -> oa.AssistantMessage:
    texts: list[str] = []
    calls: list[oa.ToolCall] = []
    for j, part in enumerate(content.parts):
        if part.thought:
            continue
        if part.function_call is not None:
            fc = part.function_call
            arguments = _encoder.encode(fc.args).decode()
            calls.append(
                oa.ToolCall(id=fc.id or new_call_id(), function=oa.FunctionCall(fc.name, arguments))
            )
        elif part.text is not None:
            texts.append(part.text)
        else:
            _unsupported(part, f"{where}.parts[{j}]")
    pairing.calls([(c.id, c.function.name) for c in calls])
    text = "\n\n".join(texts) if texts or not calls else None
    return oa.AssistantMessage(content=text, tool_calls=calls or None)


def _user_turn(
    content: gm.Content, pairing: Pairing, model_id: str, vision: bool, where: str
) -> list[oa.Message]:
    """Tool answers first (chat completions wants them right after the calls), then the rest."""
    answers: list[oa.Message] = []
    parts: list[oa.ContentPart] = []
    for j, part in enumerate(content.parts):
        at = f"{where}.parts[{j}]"
        if part.thought:
            continue
        if part.function_response is not None:
            fr = part.function_response
            call_id = fr.id or pairing.answer(fr.name)
            text = _encoder.encode(fr.response).decode()
            answers.append(oa.ToolMessage(content=text, tool_call_id=call_id))
        elif part.text is not None:
            parts.append(oa.TextPart(part.text))
        elif part.inline_data is not None and part.inline_data.mime_type.startswith("image/"):
            if not vision:
                raise InvalidRequest(f"model {model_id} does not accept images", param=at)
            blob = part.inline_data
            parts.append(oa.ImagePart(oa.ImageURL(f"data:{blob.mime_type};base64,{blob.data}")))
        else:
            _unsupported(part, at)
    if not parts:
        return answers
    texts = [p.text for p in parts if isinstance(p, oa.TextPart)]
    user: oa.Content = "\n\n".join(texts) if len(texts) == len(parts) else parts
    return [*answers, oa.UserMessage(content=user)]


def _unsupported(part: gm.Part, where: str) -> None:
    fields = msgspec.structs.asdict(part)
    kind = next((k for k, v in fields.items() if v is not None), "empty")
    raise InvalidRequest(f"{kind} parts are not supported here", param=where)


def _tools(
    tools: list[gm.Tool] | None, config: gm.ToolConfig | None
) -> tuple[list[oa.Tool], oa.ToolChoice | None]:
    declared: list[gm.FunctionDeclaration] = []
    for i, tool in enumerate(tools or []):
        others = [k for k, v in msgspec.structs.asdict(tool).items() if v is not None]
        others = [k for k in others if k != "function_declarations"]
        if others:
            raise InvalidRequest(
                f"tool {others[0]} is not supported: cortex runs function declarations only",
                param=f"tools[{i}]",
            )
        declared += tool.function_declarations or []
    fcc = config.function_calling_config if config else None
    mode = fcc.mode if fcc else "AUTO"
    allowed = fcc.allowed_function_names if fcc else None
    if allowed:
        unknown = sorted(set(allowed) - {d.name for d in declared})
        if unknown:
            raise InvalidRequest(
                f"allowedFunctionNames names {unknown[0]!r}, which is not declared",
                param="toolConfig.functionCallingConfig.allowedFunctionNames",
            )
        declared = [d for d in declared if d.name in allowed]
    out = [
        oa.Tool(
            function=oa.FunctionDef(
                name=d.name,
                description=d.description,
                parameters=d.parameters_json_schema or lower_schema(d.parameters),
            )
        )
        for d in declared
    ]
    choice: oa.ToolChoice | None = None
    if mode == "NONE":
        choice = "none"
    elif mode == "ANY":
        choice = "required"
        if len(out) == 1:
            choice = oa.NamedToolChoice(function=oa.ToolChoiceFunction(out[0].function.name))
    return out, choice


# Google's Schema fields by their proto names (google-genai sends these inside responseSchema)
_SCHEMA_NAMES = {
    "any_of": "anyOf",
    "max_items": "maxItems",
    "min_items": "minItems",
    "max_length": "maxLength",
    "min_length": "minLength",
    "max_properties": "maxProperties",
    "min_properties": "minProperties",
    "property_ordering": "propertyOrdering",
}
_COUNTS = {"maxItems", "minItems", "maxLength", "minLength", "maxProperties", "minProperties"}


def lower_schema(schema: Any) -> Any:
    """Google's OpenAPI-subset schema as JSON schema: ``"type": "OBJECT"`` -> ``"object"``;
    field names in either spelling (``max_length``, ``maxLength``), counts that proto JSON
    writes as strings (``"10"``) as numbers; ``nullable`` as a ``null`` type; and
    ``propertyOrdering`` as the order of ``properties`` (the order the grammar writes them).
    Property names, the keys of ``properties``, are left as they are."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        name: str = _SCHEMA_NAMES.get(key) or key
        if name == "properties" and isinstance(value, dict):
            value = {prop: lower_schema(sub) for prop, sub in value.items()}
        elif name == "items":
            value = lower_schema(value)
        elif name == "anyOf" and isinstance(value, list):
            value = [lower_schema(sub) for sub in value]
        elif name in _COUNTS and isinstance(value, str) and value.isdigit():
            value = int(value)
        out[name] = value
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = kind.lower()
        if out.pop("nullable", False) is True:
            out["type"] = [out["type"], "null"]
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)  # Gemini writes the declared keys only
    order = out.pop("propertyOrdering", None)
    props = out.get("properties")
    if isinstance(order, list) and isinstance(props, dict):
        first = {k: props[k] for k in order if isinstance(k, str) and k in props}
        out["properties"] = first | props
    return out


def _response_format(gen: gm.GenerationConfig) -> oa.ResponseFormat | None:
    if gen.response_mime_type != "application/json":
        if gen.response_schema or gen.response_json_schema:
            raise InvalidRequest(
                "a response schema needs responseMimeType application/json",
                param="generationConfig.responseMimeType",
            )
        return None
    schema = gen.response_json_schema or lower_schema(gen.response_schema)
    if not schema:
        return oa.ResponseFormat(type="json_object")
    json_schema = oa.JsonSchemaFormat(name="response", schema=schema, strict=True)
    return oa.ResponseFormat(type="json_schema", json_schema=json_schema)


# --------------------------------------------------------------------------- answers


def finish_reason(finish: oa.FinishReason | None) -> gm.FinishReason:
    if finish == "length":
        return "MAX_TOKENS"
    if finish == "content_filter":
        return "SAFETY"
    return "STOP"


def usage(u: oa.Usage | None) -> gm.UsageMetadata | None:
    if u is None:
        return None
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0
    return gm.UsageMetadata(
        prompt_token_count=u.prompt_tokens,
        candidates_token_count=u.completion_tokens,
        total_token_count=u.total_tokens,
        cached_content_token_count=cached or None,
    )


def call_parts(calls: list[oa.ToolCall]) -> list[gm.OutPart]:
    return [
        gm.OutPart(
            function_call=gm.OutFunctionCall(
                name=c.function.name, args=tool_input(c.function.arguments), id=c.id
            )
        )
        for c in calls
    ]


def reply(resp: oa.ChatCompletion, model: str) -> gm.GenerateContentResponse:
    """The whole (non-stream) generateContent answer."""
    if not resp.choices:
        raise UpstreamError("upstream returned no choices")
    choice = resp.choices[0]
    parts = [gm.OutPart(text=choice.message.content)] if choice.message.content else []
    parts += call_parts(choice.message.tool_calls or [])
    candidate = gm.Candidate(
        content=gm.OutContent(parts=parts, role="model"),
        finish_reason=finish_reason(choice.finish_reason),
    )
    return gm.GenerateContentResponse(
        candidates=[candidate],
        usage_metadata=usage(resp.usage),
        model_version=model,
        response_id=new_response_id(),
    )


# --------------------------------------------------------------------------- embeddings


def embed_to_openai(
    requests: list[gm.EmbedContentRequest], model_id: str, model_of: Callable[[str], str]
) -> EmbeddingRequest:
    """``:embedContent`` (one request) or ``:batchEmbedContents`` as one /v1/embeddings
    request. ``model_of`` resolves a request's own ``model`` ("models/ID") to a catalogue id,
    which must be the path's. Task types and titles would need per-task prompts the models do
    not have: they are refused, as are differing ``outputDimensionality`` values."""
    inputs: list[str | int | list[int]] = []
    batch = len(requests) > 1
    for i, req in enumerate(requests):
        where = f"requests[{i}]." if batch else ""
        if req.model is not None and model_of(req.model.removeprefix("models/")) != model_id:
            raise InvalidRequest(
                f"{req.model} differs from the model of the path, models/{model_id}",
                param=f"{where}model",
            )
        if req.task_type not in (None, "TASK_TYPE_UNSPECIFIED"):
            raise InvalidRequest(
                f"taskType {req.task_type} is not supported: cortex's embedding models take "
                "no task type (omit it)",
                param=f"{where}taskType",
            )
        if req.title is not None:
            raise InvalidRequest(
                "title is not supported (it only serves taskType RETRIEVAL_DOCUMENT)",
                param=f"{where}title",
            )
        if req.output_dimensionality != requests[0].output_dimensionality:
            raise InvalidRequest(
                "every request of a batch must ask for the same outputDimensionality",
                param=f"{where}outputDimensionality",
            )
        inputs.append(_text(req.content.parts, f"{where}content"))
    return EmbeddingRequest(
        model=model_id, input=inputs, dimensions=requests[0].output_dimensionality
    )
