"""Google's Gemini API wire shapes (``/v1beta/models/{model}:generateContent`` and friends).

Only the gateway speaks this dialect; gateway/dialects/gemini maps it onto chat completions.
Field names are camelCase on the wire (``rename="camel"``), as Google's SDKs send them; like
Google's API (proto JSON), ``decode`` also takes the proto names (``generation_config``). Like
Google's own API, a request with a field this module does not know is refused with a 400
naming it (``forbid_unknown_fields``), so a misspelt setting never goes silently unused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import inspect

from cortex import protocol
from cortex.errors import InvalidRequest
from cortex.protocol.bounds import check_nesting, check_normal
from cortex.protocol.embeddings import MAX_INPUTS
from cortex.protocol.openai import MaxTokens, StopStr, Temperature, TopK, TopP


class _Wire(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """camelCase, absent fields omitted when encoding."""


class _Strict(_Wire, forbid_unknown_fields=True):
    """A request shape: unknown fields are refused, as Google refuses them."""


# --------------------------------------------------------------------------- contents


class Blob(_Strict):
    mime_type: str
    data: str  # base64


class FunctionCall(_Strict):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str | None = None

    def __post_init__(self) -> None:
        check_nesting(self.args, "args")


class FunctionResponse(_Strict):
    name: str
    response: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str | None = None

    def __post_init__(self) -> None:
        check_nesting(self.response, "response")


class Part(_Strict):
    text: str | None = None
    inline_data: Blob | None = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None
    file_data: dict[str, Any] | None = None
    executable_code: dict[str, Any] | None = None
    code_execution_result: dict[str, Any] | None = None
    thought: bool | None = None
    thought_signature: str | None = None
    video_metadata: dict[str, Any] | None = None


class Content(_Strict):
    role: Literal["user", "model", "function", "system"] | None = None
    parts: list[Part] = msgspec.field(default_factory=list)


# --------------------------------------------------------------------------- tools


class FunctionDeclaration(_Strict):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None  # Google's OpenAPI subset (types in capitals)
    parameters_json_schema: dict[str, Any] | None = None  # plain JSON schema
    response: dict[str, Any] | None = None
    response_json_schema: dict[str, Any] | None = None
    behavior: str | None = None

    def __post_init__(self) -> None:
        check_nesting(self.parameters, "parameters")
        check_nesting(self.parameters_json_schema, "parametersJsonSchema")


class Tool(_Strict):
    function_declarations: list[FunctionDeclaration] | None = None
    google_search: dict[str, Any] | None = None
    google_search_retrieval: dict[str, Any] | None = None
    code_execution: dict[str, Any] | None = None
    url_context: dict[str, Any] | None = None
    computer_use: dict[str, Any] | None = None


Mode = Literal["MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"]


class FunctionCallingConfig(_Strict):
    mode: Mode = "AUTO"
    allowed_function_names: list[str] | None = None


class ToolConfig(_Strict):
    function_calling_config: FunctionCallingConfig | None = None


# --------------------------------------------------------------------------- generation


class ThinkingConfig(_Strict):
    include_thoughts: bool | None = None
    thinking_budget: int | None = None
    thinking_level: str | None = None


class GenerationConfig(_Strict):
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    seed: int | None = None
    candidate_count: Annotated[int, msgspec.Meta(ge=1, le=1)] | None = None
    max_output_tokens: MaxTokens | None = None
    stop_sequences: Annotated[list[StopStr], msgspec.Meta(max_length=16)] | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)] | None = None
    response_mime_type: Literal["text/plain", "application/json"] | None = None
    response_schema: dict[str, Any] | None = None
    response_json_schema: dict[str, Any] | None = None
    response_modalities: list[Literal["TEXT"]] | None = None
    response_logprobs: bool | None = None
    logprobs: int | None = None
    thinking_config: ThinkingConfig | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
            check_normal(getattr(self, name), name)
        check_nesting(self.response_schema, "responseSchema")
        check_nesting(self.response_json_schema, "responseJsonSchema")
        if self.response_logprobs or self.logprobs:
            raise msgspec.ValidationError("logprobs are not supported - at `$.responseLogprobs`")


class GenerateContentRequest(_Strict):
    contents: list[Content]
    system_instruction: Content | None = None
    tools: list[Tool] | None = None
    tool_config: ToolConfig | None = None
    generation_config: GenerationConfig | None = None
    safety_settings: list[dict[str, Any]] | None = None  # cortex runs no safety filters
    cached_content: str | None = None
    labels: dict[str, str] | None = None
    model: str | None = None  # inside countTokens' generateContentRequest

    def __post_init__(self) -> None:
        if self.cached_content:
            raise msgspec.ValidationError(
                "cachedContent is not supported: cortex stores no content - at `$.cachedContent`"
            )


class CountTokensRequest(_Strict):
    contents: list[Content] | None = None
    generate_content_request: GenerateContentRequest | None = None


# --------------------------------------------------------------------------- embeddings

TaskType = Literal[
    "TASK_TYPE_UNSPECIFIED",
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
]


class EmbedContentRequest(_Strict):
    """``:embedContent``, and each of ``:batchEmbedContents``' requests."""

    content: Content
    model: str | None = None  # "models/ID"; in a batch, the model of the path
    task_type: TaskType | None = None
    title: str | None = None
    output_dimensionality: Annotated[int, msgspec.Meta(ge=1, le=65536)] | None = None


class BatchEmbedContentsRequest(_Strict):
    requests: Annotated[
        list[EmbedContentRequest], msgspec.Meta(min_length=1, max_length=MAX_INPUTS)
    ]


# --------------------------------------------------------------------------- responses


class OutFunctionCall(_Wire):
    name: str
    args: dict[str, Any]
    id: str | None = None


class OutPart(_Wire):
    text: str | None = None
    function_call: OutFunctionCall | None = None


class OutContent(_Wire):
    parts: list[OutPart]
    role: Literal["model"]  # no default: always sent, as Gemini sends it


FinishReason = Literal["STOP", "MAX_TOKENS", "SAFETY", "OTHER"]


class Candidate(_Wire):
    content: OutContent
    index: int = 0
    finish_reason: FinishReason | None = None


class UsageMetadata(_Wire):
    prompt_token_count: int
    candidates_token_count: int
    total_token_count: int
    cached_content_token_count: int | None = None


class GenerateContentResponse(_Wire):
    candidates: list[Candidate]
    usage_metadata: UsageMetadata | None = None
    model_version: str | None = None
    response_id: str | None = None


class ContentEmbedding(_Wire):
    values: list[float]


class EmbedContentResponse(_Wire):
    embedding: ContentEmbedding


class BatchEmbedContentsResponse(_Wire):
    embeddings: list[ContentEmbedding]


class CountTokensResponse(_Wire):
    total_tokens: int


class Model(_Wire):
    name: str  # models/ID
    base_model_id: str
    version: str
    display_name: str
    description: str
    input_token_limit: int
    output_token_limit: int
    supported_generation_methods: list[str]


class ModelList(_Wire):
    models: list[Model]


class ErrorDetail(msgspec.Struct):
    code: int
    message: str
    status: str


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


# --------------------------------------------------------------------------- decoding

T = TypeVar("T")


def decode(body: bytes, kind: type[T]) -> T:
    """``protocol.decode``, also taking Google's proto field names (``generation_config``,
    ``function_declarations``) for the camelCase ones, as Google's API does. A camelCase body
    decodes in one pass; only a body the strict decoder refused is read again, its field names
    mapped by type (never the keys of free-form objects: schemas, arguments) and converted.
    Both spellings of one field in one object are a 400."""
    try:
        return protocol.decode(body, kind)
    except InvalidRequest as refused:
        try:
            data = msgspec.json.decode(body)
        except (msgspec.DecodeError, RecursionError):
            raise refused from None
        renamed: list[str] = []
        camel = _camel(data, _type_info(kind), renamed)
        if not renamed:
            raise refused from None
        return protocol.convert(camel, kind, body)


_infos: dict[type[Any], inspect.Type] = {}


def _type_info(kind: type[Any]) -> inspect.Type:
    info = _infos.get(kind)
    if info is None:
        info = _infos[kind] = inspect.type_info(kind)
    return info


def _camel(data: Any, info: inspect.Type, renamed: list[str]) -> Any:
    """``data`` with the proto names of ``info``'s fields replaced by their wire names."""
    if isinstance(info, inspect.UnionType):  # X | None: the struct or list member, if any
        kinds = [t for t in info.types if isinstance(t, inspect.StructType | inspect.ListType)]
        if not kinds:
            return data
        info = kinds[0]
    if isinstance(info, inspect.ListType) and isinstance(data, list):
        return [_camel(item, info.item_type, renamed) for item in data]
    if not (isinstance(info, inspect.StructType) and isinstance(data, dict)):
        return data
    by_wire = {f.encode_name: f for f in info.fields}
    by_name = {f.name: f for f in info.fields}
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = by_wire.get(key)
        if field is None and key in by_name:
            field = by_name[key]
            if field.encode_name in data:
                raise InvalidRequest(
                    f"{key} and {field.encode_name} are one field; send one of them",
                    param=field.encode_name,
                )
            renamed.append(key)
        out[field.encode_name if field else key] = (
            _camel(value, field.type, renamed) if field else value
        )
    return out
