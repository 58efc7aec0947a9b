"""OpenAI Responses API wire shapes (POST /v1/responses): request, response object, stream events.

Only the gateway speaks this dialect; its translator (gateway/dialects/responses/translate.py)
maps it onto the chat completions a neuron serves. Decoding needs one step msgspec cannot take: the
SDKs send easy messages (``{"role": "user", "content": "hi"}``) without the ``type`` tag every
other input item carries, so ``decode_request`` fills ``type: "message"`` in before validating.

cortex keeps no responses (``store`` false is the only mode): fields that would need a stored
response or conversation are refused with a 400 naming them, not silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from cortex import protocol
from cortex.errors import InvalidRequest
from cortex.protocol.bounds import check_nesting, check_normal, refuse
from cortex.protocol.openai import MaxTokens, Temperature, TopP

# --------------------------------------------------------------------------- input items


class InputText(msgspec.Struct, tag_field="type", tag="input_text"):
    text: str


class InputImage(msgspec.Struct, tag_field="type", tag="input_image", kw_only=True):
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputFile(msgspec.Struct, tag_field="type", tag="input_file", kw_only=True):
    file_id: str | None = None
    filename: str | None = None


class OutputText(msgspec.Struct, tag_field="type", tag="output_text", kw_only=True):
    """In a request: an earlier assistant turn's text (annotations are not read)."""

    text: str


class Refusal(msgspec.Struct, tag_field="type", tag="refusal"):
    refusal: str


ContentPart = InputText | InputImage | InputFile | OutputText | Refusal
FunctionOutputPart = InputText | InputImage | InputFile


class MessageItem(msgspec.Struct, tag_field="type", tag="message", kw_only=True):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(msgspec.Struct, tag_field="type", tag="function_call", kw_only=True):
    call_id: Annotated[str, msgspec.Meta(min_length=1)]
    name: Annotated[str, msgspec.Meta(min_length=1)]
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(
    msgspec.Struct, tag_field="type", tag="function_call_output", kw_only=True
):
    call_id: Annotated[str, msgspec.Meta(min_length=1)]
    output: str | list[FunctionOutputPart]
    id: str | None = None
    status: str | None = None


class ReasoningItem(msgspec.Struct, tag_field="type", tag="reasoning", kw_only=True):
    """Another model's reasoning (Codex resends it with ``encrypted_content``): never prompted."""

    id: str | None = None
    summary: list[dict[str, Any]] = msgspec.field(default_factory=list)
    encrypted_content: str | None = None


class ItemReference(msgspec.Struct, tag_field="type", tag="item_reference"):
    id: str


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem | ItemReference
_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning", "item_reference")


# --------------------------------------------------------------------------- request


class ToolParam(msgspec.Struct, kw_only=True):
    """Any tool; only ``function`` tools reach the model (web_search, namespace, ... are not
    run by cortex, so they are dropped rather than advertised)."""

    type: str
    name: Annotated[str, msgspec.Meta(max_length=128)] | None = None  # as chat's FunctionDef
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def __post_init__(self) -> None:
        if self.type == "function" and not self.name:
            raise ValueError("a function tool needs a name")
        check_nesting(self.parameters, "parameters")


class ToolChoiceParam(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str
    name: str | None = None


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceParam


class TextFormat(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        check_nesting(self.schema, "schema")


class TextConfig(msgspec.Struct, kw_only=True, omit_defaults=True):
    format: TextFormat = msgspec.field(default_factory=lambda: TextFormat(type="text"))
    verbosity: str | None = None


class Reasoning(msgspec.Struct, kw_only=True):
    """Echoed; ``effort`` becomes chat's ``reasoning_effort`` (the template's thinking switch)."""

    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    input: str | list[InputItem]
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    prompt_cache_key: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # Need a stored response or conversation, which cortex does not keep: refused below.
    store: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_normal(self.temperature, "temperature")
        check_normal(self.top_p, "top_p")
        if self.store:
            refuse("store", "cortex stores no responses; send store: false (or omit it)")
        for name in ("previous_response_id", "conversation", "prompt"):
            if getattr(self, name) is not None:
                refuse(name, "cortex stores no responses; send the whole conversation in input")
        if self.background:
            refuse("background", "background responses are not supported")

    @property
    def function_tools(self) -> list[FunctionTool]:
        """The tools cortex offers the model, as the response object echoes them."""
        return [
            FunctionTool(
                name=t.name or "",
                description=t.description,
                parameters=t.parameters,
                strict=t.strict,
            )
            for t in self.tools or []
            if t.type == "function"
        ]


def decode_request(body: bytes) -> ResponsesRequest:
    """Decode and validate a request body (errors as ``protocol.decode``'s)."""
    data = protocol.decode(body, dict[str, Any])
    items = data.get("input")
    for i, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            continue
        kind = item.setdefault("type", "message")
        if kind not in _ITEM_TYPES:
            raise InvalidRequest(
                f"input items of type {kind!r} are not supported (cortex takes "
                f"{', '.join(_ITEM_TYPES)}): cortex runs function tools only",
                param=f"input[{i}].type",
            )
    return protocol.convert(data, ResponsesRequest, body)


# --------------------------------------------------------------------------- response object

Status = Literal["in_progress", "completed", "incomplete", "failed"]


class OutputTextPart(msgspec.Struct, tag_field="type", tag="output_text", kw_only=True):
    text: str
    annotations: list[dict[str, Any]] = msgspec.field(default_factory=list)
    logprobs: list[dict[str, Any]] = msgspec.field(default_factory=list)


class OutputMessage(msgspec.Struct, tag_field="type", tag="message", kw_only=True):
    id: str
    status: Status
    role: Literal["assistant"] = "assistant"
    content: list[OutputTextPart]


class FunctionCallOutput(msgspec.Struct, tag_field="type", tag="function_call", kw_only=True):
    """A tool call the model made (``function_call`` output item)."""

    id: str
    call_id: str
    name: str
    arguments: str
    status: Status


OutputItem = OutputMessage | FunctionCallOutput


class FunctionTool(msgspec.Struct, tag_field="type", tag="function", kw_only=True):
    """A function tool as the response object echoes it."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(msgspec.Struct):
    code: str
    message: str


class IncompleteDetails(msgspec.Struct):
    reason: Literal["max_output_tokens", "content_filter"]


class Response(msgspec.Struct, kw_only=True):
    """The response object: the non-stream answer, and the snapshot lifecycle events carry."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    model: str
    output: list[OutputItem]
    usage: Usage | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: ToolChoice = "auto"
    tools: list[FunctionTool] = msgspec.field(default_factory=list)
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    reasoning: Reasoning | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    store: bool = False
    previous_response_id: None = None
    prompt_cache_key: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    user: str | None = None


# --------------------------------------------------------------------------- stream events
# Every event carries ``sequence_number`` (0, 1, 2, ... within one response).


class ResponseCreated(msgspec.Struct, tag_field="type", tag="response.created", kw_only=True):
    sequence_number: int
    response: Response


class ResponseInProgress(
    msgspec.Struct, tag_field="type", tag="response.in_progress", kw_only=True
):
    sequence_number: int
    response: Response


class ResponseCompleted(msgspec.Struct, tag_field="type", tag="response.completed", kw_only=True):
    sequence_number: int
    response: Response


class ResponseIncomplete(msgspec.Struct, tag_field="type", tag="response.incomplete", kw_only=True):
    sequence_number: int
    response: Response


class ResponseFailed(msgspec.Struct, tag_field="type", tag="response.failed", kw_only=True):
    sequence_number: int
    response: Response


class OutputItemAdded(
    msgspec.Struct, tag_field="type", tag="response.output_item.added", kw_only=True
):
    sequence_number: int
    output_index: int
    item: OutputItem


class OutputItemDone(
    msgspec.Struct, tag_field="type", tag="response.output_item.done", kw_only=True
):
    sequence_number: int
    output_index: int
    item: OutputItem


class ContentPartAdded(
    msgspec.Struct, tag_field="type", tag="response.content_part.added", kw_only=True
):
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: OutputTextPart


class ContentPartDone(
    msgspec.Struct, tag_field="type", tag="response.content_part.done", kw_only=True
):
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: OutputTextPart


class OutputTextDelta(
    msgspec.Struct, tag_field="type", tag="response.output_text.delta", kw_only=True
):
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[dict[str, Any]] = msgspec.field(default_factory=list)


class OutputTextDone(
    msgspec.Struct, tag_field="type", tag="response.output_text.done", kw_only=True
):
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[dict[str, Any]] = msgspec.field(default_factory=list)


class FunctionCallArgumentsDelta(
    msgspec.Struct, tag_field="type", tag="response.function_call_arguments.delta", kw_only=True
):
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDone(
    msgspec.Struct, tag_field="type", tag="response.function_call_arguments.done", kw_only=True
):
    sequence_number: int
    item_id: str
    output_index: int
    name: str
    arguments: str


StreamEvent = (
    ResponseCreated
    | ResponseInProgress
    | ResponseCompleted
    | ResponseIncomplete
    | ResponseFailed
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | OutputTextDelta
    | OutputTextDone
    | FunctionCallArgumentsDelta
    | FunctionCallArgumentsDone
)
