"""OpenAI Chat Completions wire shapes (request, response, stream chunk, model list).

Bounds live in the types, so decoding is validation. Every field a client sends that changes
the answer is declared here and honoured by the neuron (or refused there with a 400 naming it,
when the model's harness lacks it: docs/api.md lists each). Unknown fields are dropped, as a
server must for forward compatibility; ``user`` and ``metadata`` are accepted and change nothing
by definition.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from cortex.config import SamplingDefaults
from cortex.protocol.bounds import check_logit_bias, check_nesting, check_normal, refuse

Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
TopK = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Seed = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
StopStr = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
SAMPLING_FLOATS = (
    "temperature",
    "top_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
)


# --------------------------------------------------------------------------- request parts


class TextPart(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class ImageURL(msgspec.Struct):
    url: str
    detail: str | None = None


class ImagePart(msgspec.Struct, tag_field="type", tag="image_url"):
    image_url: ImageURL


class InputAudioPart(msgspec.Struct, tag_field="type", tag="input_audio"):
    input_audio: dict[str, Any]


class FilePart(msgspec.Struct, tag_field="type", tag="file"):
    file: dict[str, Any]


ContentPart = TextPart | ImagePart | InputAudioPart | FilePart
Content = str | list[ContentPart]


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str = ""


class ToolCall(msgspec.Struct, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(
    msgspec.Struct, tag_field="role", tag="system", kw_only=True, omit_defaults=True
):
    content: Content
    name: str | None = None


class DeveloperMessage(
    msgspec.Struct, tag_field="role", tag="developer", kw_only=True, omit_defaults=True
):
    content: Content
    name: str | None = None


class UserMessage(msgspec.Struct, tag_field="role", tag="user", kw_only=True, omit_defaults=True):
    content: Content
    name: str | None = None


class AssistantMessage(
    msgspec.Struct, tag_field="role", tag="assistant", kw_only=True, omit_defaults=True
):
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None
    reasoning_content: str | None = None


class ToolMessage(msgspec.Struct, tag_field="role", tag="tool", kw_only=True, omit_defaults=True):
    content: Content
    tool_call_id: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


class FunctionDef(msgspec.Struct, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def __post_init__(self) -> None:
        check_nesting(self.parameters, "parameters")


class Tool(msgspec.Struct, kw_only=True):
    type: Literal["function"] = "function"
    function: FunctionDef


class ToolChoiceFunction(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct, kw_only=True):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class JsonSchemaFormat(msgspec.Struct, kw_only=True):
    name: Annotated[str, msgspec.Meta(max_length=64)] = "response"
    description: str | None = None
    schema: dict[str, Any] | None = None  # None: any JSON object
    strict: bool | None = None  # cortex always constrains, so strict or not it is honoured

    def __post_init__(self) -> None:
        check_nesting(self.schema, "response_format.json_schema.schema")


class ResponseFormat(msgspec.Struct, kw_only=True):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None

    def __post_init__(self) -> None:
        if self.type == "json_schema" and self.json_schema is None:
            raise msgspec.ValidationError(
                "type json_schema needs a json_schema object - at `$.response_format.json_schema`"
            )


LogitBias = Annotated[float, msgspec.Meta(ge=-100.0, le=100.0)]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class ChatCompletionRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=8)] = 1
    seed: Seed | None = None
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens past EOS (benchmarks, tests)
    stop: StopStr | Annotated[list[StopStr], msgspec.Meta(max_length=16)] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)] | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)] | None = None
    repetition_penalty: Annotated[float, msgspec.Meta(gt=0.0, le=10.0)] | None = None  # vLLM's
    logit_bias: Annotated[dict[str, LogitBias], msgspec.Meta(max_length=1024)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    reasoning_effort: ReasoningEffort | None = None
    # vLLM's: at most this many reasoning tokens, then the think block is closed (Anthropic's
    # thinking.budget_tokens arrives here)
    thinking_token_budget: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] | None = None
    # vLLM's: extra variables for the chat template (Qwen3's enable_thinking, ...)
    chat_template_kwargs: Annotated[dict[str, Any], msgspec.Meta(max_length=32)] | None = None
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in SAMPLING_FLOATS:
            check_normal(getattr(self, name), name)
        if self.top_logprobs is not None and not self.logprobs:
            refuse("top_logprobs", "top_logprobs needs logprobs: true")
        check_logit_bias(self.logit_bias)
        self._check_tool_choice()

    def _check_tool_choice(self) -> None:
        """A forced choice needs tools, a named one a tool of that name (as OpenAI checks):
        otherwise the neuron could only ignore it."""
        choice = self.tool_choice
        if choice is None or choice in ("auto", "none"):
            return
        names = {tool.function.name for tool in self.tools or ()}
        if not names:
            raise msgspec.ValidationError("a forced tool_choice needs tools - at `$.tool_choice`")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise msgspec.ValidationError(
                f"tool_choice names {choice.function.name!r}, which is not in tools"
                " - at `$.tool_choice`"
            )

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def logprob_count(self) -> int | None:
        """Alternatives per token asked for (``top_logprobs``); None: no logprobs."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def completion_limit(self) -> int | None:
        """max_completion_tokens supersedes the deprecated max_tokens."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# --------------------------------------------------------------------------- responses

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class PromptTokensDetails(msgspec.Struct):
    """OpenAI's breakdown of the prompt: ``cached_tokens`` came from the prefix cache."""

    cached_tokens: int = 0


class Usage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class ResponseMessage(msgspec.Struct, kw_only=True, omit_defaults=False):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class TopLogprobEntry(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class LogprobEntry(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprobEntry] = msgspec.field(default_factory=list)


class ChoiceLogprobs(msgspec.Struct, kw_only=True):
    content: list[LogprobEntry] | None = None
    refusal: None = None


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: ResponseMessage
    finish_reason: FinishReason | None
    logprobs: ChoiceLogprobs | None = None
    # vLLM's extension: the stop string that ended generation (None for EOS or length).
    stop_reason: str | None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class ToolCallFunctionDelta(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallFunctionDelta | None = None


class Delta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None
    stop_reason: str | None = None  # as in Choice


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# --------------------------------------------------------------------------- models


class CortexModelInfo(msgspec.Struct, kw_only=True):
    """cortex's extension to a model card: where the model is and what it can take."""

    state: Literal["resident", "loading", "available"]
    nodes: list[str] = msgspec.field(default_factory=list)  # where loaded or loading
    context_length: int = 0  # 0 = unknown
    pinned: bool = False
    # Defaults for omitted sampling fields: those a neuron uses (models.toml over the model's
    # generation_config.json) once loaded, else the models.toml values; None when neither.
    sampling: SamplingDefaults | None = None


class TopProvider(msgspec.Struct, kw_only=True):
    """OpenRouter's per-model limits object (Kilo, Roo and Cline read it for OpenRouter-shaped
    listings)."""

    context_length: int
    max_completion_tokens: int


OUTPUT_SHARE = 4  # an unconfigured model advertises a quarter of its context as its output...
OUTPUT_CAP = 4096  # ...at most this (the neuron's reply cap when a request names none)


class ModelCard(msgspec.Struct, kw_only=True):
    """An OpenAI model object plus the context window in the fields clients read: vLLM's
    ``max_model_len`` (Continue's vllm provider, Cline), ``context_length`` (OpenRouter, LM Studio;
    opencode's and most agents' probes), ``max_context_length`` (LM Studio), OpenRouter's
    ``top_provider`` and ``max_output_tokens`` (LiteLLM's model_info name). All absent (null) when
    the window is unknown: a model neither configured with one nor loaded yet."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "cortex"
    max_model_len: int | None = None
    context_length: int | None = None
    max_context_length: int | None = None
    max_output_tokens: int | None = None
    top_provider: TopProvider | None = None
    cortex: CortexModelInfo | None = None

    def sized(self, context_length: int, max_output_tokens: int = 0) -> ModelCard:
        """This card with its window fields filled; ``max_output_tokens`` 0: a quarter of the
        context, at most OUTPUT_CAP (a client reserves the output from the window, so
        advertising the whole context as output would leave it no room for the prompt)."""
        if context_length <= 0:
            return self
        output = max_output_tokens or min(OUTPUT_CAP, max(1, context_length // OUTPUT_SHARE))
        output = min(output, context_length)
        return msgspec.structs.replace(
            self,
            max_model_len=context_length,
            context_length=context_length,
            max_context_length=context_length,
            max_output_tokens=output,
            top_provider=TopProvider(context_length=context_length, max_completion_tokens=output),
        )


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[ModelCard]
