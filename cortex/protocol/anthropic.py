"""Anthropic Messages wire shapes: request, response, every stream event, count_tokens.

Only the gateway speaks this dialect (its translator maps it onto the OpenAI shapes the neurons
understand). ``output_config`` (effort, structured-output format), ``output_format``, tools'
``strict`` and ``disable_parallel_tool_use`` are translated and honoured. Unknown fields are
ignored (Claude Code sends ``context_management`` and new ones with each release: never a 400
for those); ``cache_control`` is accepted everywhere and unused (the neurons cache prefixes by
content).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from cortex.protocol.bounds import check_nesting, check_normal
from cortex.protocol.openai import MaxTokens, TopK, TopP


class CacheControl(msgspec.Struct, kw_only=True):
    type: str = "ephemeral"
    ttl: str | None = None


# --------------------------------------------------------------------------- content blocks


class TextBlock(msgspec.Struct, tag_field="type", tag="text", kw_only=True, omit_defaults=True):
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class ImageSource(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: Literal["base64", "url", "file"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    file_id: str | None = None


class ImageBlock(msgspec.Struct, tag_field="type", tag="image", kw_only=True):
    source: ImageSource
    cache_control: CacheControl | None = None


class DocumentBlock(msgspec.Struct, tag_field="type", tag="document", kw_only=True):
    source: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolUseBlock(msgspec.Struct, tag_field="type", tag="tool_use", kw_only=True):
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None

    def __post_init__(self) -> None:
        check_nesting(self.input, "input")


ToolResultContent = str | list[TextBlock | ImageBlock]


class ToolResultBlock(msgspec.Struct, tag_field="type", tag="tool_result", kw_only=True):
    tool_use_id: str
    content: ToolResultContent = ""
    is_error: bool = False
    cache_control: CacheControl | None = None


class ThinkingBlock(msgspec.Struct, tag_field="type", tag="thinking", kw_only=True):
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(msgspec.Struct, tag_field="type", tag="redacted_thinking"):
    data: str


RequestBlock = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
)


class Message(msgspec.Struct, kw_only=True):
    # "system": Claude Code 2.1.154+ puts system messages inside ``messages`` (merged into the
    # leading system prompt by the translator).
    role: Literal["user", "assistant", "system"]
    content: str | list[RequestBlock]


class ToolDef(msgspec.Struct, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    type: str | None = None
    cache_control: CacheControl | None = None
    strict: bool | None = None  # structured outputs: the input always matches input_schema

    def __post_init__(self) -> None:
        check_nesting(self.input_schema, "input_schema")


class JsonOutputFormat(msgspec.Struct, kw_only=True):
    """Structured outputs: the reply's text is JSON valid against ``schema``."""

    type: Literal["json_schema"]
    schema: dict[str, Any]

    def __post_init__(self) -> None:
        check_nesting(self.schema, "output_config.format.schema")


class OutputConfig(msgspec.Struct, kw_only=True):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JsonOutputFormat | None = None


class ToolChoiceAuto(msgspec.Struct, tag_field="type", tag="auto", kw_only=True):
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(msgspec.Struct, tag_field="type", tag="any", kw_only=True):
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(msgspec.Struct, tag_field="type", tag="tool", kw_only=True):
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(msgspec.Struct, tag_field="type", tag="none"):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class Metadata(msgspec.Struct, kw_only=True):
    user_id: str | None = None


class ThinkingConfig(msgspec.Struct, kw_only=True):
    """``enabled`` (within ``budget_tokens``), ``disabled`` or ``adaptive``: the translator maps
    it onto the chat template's thinking switch and the engine's thinking budget. Other types
    (a newer API's) are accepted and change nothing."""

    type: str
    budget_tokens: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] | None = None


class MessagesRequest(msgspec.Struct, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: list[Message]
    max_tokens: MaxTokens
    system: str | list[TextBlock] | None = None
    stop_sequences: (
        Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(max_length=16)]
        | None
    ) = None
    stream: bool = False
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    thinking: ThinkingConfig | None = None
    service_tier: str | None = None
    output_config: OutputConfig | None = None
    output_format: JsonOutputFormat | None = None  # the structured-outputs beta's spelling

    def __post_init__(self) -> None:
        check_normal(self.temperature, "temperature")
        check_normal(self.top_p, "top_p")


class CountTokensRequest(msgspec.Struct, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: list[Message]
    system: str | list[TextBlock] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None


class CountTokensResponse(msgspec.Struct):
    input_tokens: int


# --------------------------------------------------------------------------- responses

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"]


class Usage(msgspec.Struct, kw_only=True):
    """Anthropic splits the prompt: input (not from cache) + cache creation + cache read."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class OutText(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class OutToolUse(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


OutBlock = OutText | OutToolUse


class MessagesResponse(msgspec.Struct, kw_only=True, omit_defaults=False):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[OutBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: Usage


# --------------------------------------------------------------------------- stream events


class MessageStart(msgspec.Struct, tag_field="type", tag="message_start"):
    message: MessagesResponse


class ContentBlockStart(msgspec.Struct, tag_field="type", tag="content_block_start"):
    index: int
    content_block: OutBlock


class TextDelta(msgspec.Struct, tag_field="type", tag="text_delta"):
    text: str


class InputJsonDelta(msgspec.Struct, tag_field="type", tag="input_json_delta"):
    partial_json: str


class ContentBlockDelta(msgspec.Struct, tag_field="type", tag="content_block_delta"):
    index: int
    delta: TextDelta | InputJsonDelta


class ContentBlockStop(msgspec.Struct, tag_field="type", tag="content_block_stop"):
    index: int


class MessageDeltaBody(msgspec.Struct, kw_only=True, omit_defaults=False):
    stop_reason: StopReason | None
    stop_sequence: str | None = None


class DeltaUsage(msgspec.Struct, kw_only=True, omit_defaults=True):
    output_tokens: int
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageDelta(msgspec.Struct, tag_field="type", tag="message_delta"):
    delta: MessageDeltaBody
    usage: DeltaUsage


class MessageStop(msgspec.Struct, tag_field="type", tag="message_stop"):
    pass


class Ping(msgspec.Struct, tag_field="type", tag="ping"):
    pass


class ErrorDetail(msgspec.Struct):
    type: str
    message: str


class ErrorEvent(msgspec.Struct, tag_field="type", tag="error"):
    error: ErrorDetail


StreamEvent = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
    | ErrorEvent
)


# --------------------------------------------------------------------------- models


class ModelInfo(msgspec.Struct, kw_only=True):
    id: str
    display_name: str
    created_at: str = "1970-01-01T00:00:00Z"  # RFC 3339; the epoch when unknown, as the API allows
    type: Literal["model"] = "model"


class ModelListPage(msgspec.Struct, kw_only=True, omit_defaults=False):
    data: list[ModelInfo]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
