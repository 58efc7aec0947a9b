"""Ollama's native API wire shapes (``/api/chat``, ``/api/generate``, ``/api/tags``, ...).

Only the gateway speaks this dialect; gateway/dialects/ollama maps it onto chat completions.
Ollama ignores unknown top-level fields, and so does this module; ``options`` is different:
an option cortex does not know is a 400 naming it (Ollama only warns), because a misspelt
sampling option would otherwise change nothing silently. Options that change the output and
that no neuron implements are refused unless they carry their neutral value (see
``Options.refused``); the load-time options (``num_gpu``, ``num_thread``, ...) are the
operator's (models.toml), so they are accepted and have no effect on the answer.

Durations in responses are nanoseconds, as Ollama's are; times are RFC 3339 strings.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from cortex.protocol.bounds import check_nesting, check_normal
from cortex.protocol.embeddings import MAX_INPUTS, InputText
from cortex.protocol.openai import StopStr, Temperature, Tool, TopK

ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Penalty = Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

# --------------------------------------------------------------------------- options

# Options that change the answer, no neuron implements them, and their neutral value.
NEUTRAL: dict[str, float | int | bool] = {
    "repeat_penalty": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "tfs_z": 1.0,
    "mirostat": 0,
}


class Options(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    # honoured: mapped onto the chat request
    temperature: Temperature | None = None
    top_p: Unit | None = None
    top_k: TopK | None = None
    seed: int | None = None
    num_predict: Annotated[int, msgspec.Meta(ge=-2, le=1_000_000)] | None = None
    stop: list[StopStr] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    num_ctx: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] | None = None
    # refused unless neutral (NEUTRAL)
    repeat_penalty: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    tfs_z: float | None = None
    mirostat: int | None = None
    # no effect without their companions above (mirostat, repeat_penalty)
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    repeat_last_n: int | None = None
    penalize_newline: bool | None = None
    # load-time and hardware options: the operator's (models.toml, neuron.toml)
    num_keep: int | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    num_thread: int | None = None
    numa: bool | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    embedding_only: bool | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
            check_normal(getattr(self, name), name)
        for name, neutral in NEUTRAL.items():
            value = getattr(self, name)
            if value is not None and value != neutral:
                raise msgspec.ValidationError(
                    f"option {name} is not supported (only its neutral value {neutral} is)"
                    f" - at `$.{name}`"
                )


# --------------------------------------------------------------------------- requests


class ToolCallFunction(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    index: int | None = None

    def __post_init__(self) -> None:
        check_nesting(self.arguments, "arguments")


class ToolCall(msgspec.Struct, kw_only=True, omit_defaults=True):
    function: ToolCallFunction
    id: str | None = None


class Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None  # base64, no data: prefix
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None  # on a tool message: which tool answered
    tool_call_id: str | None = None
    thinking: str | None = None  # an earlier turn's thinking: dropped


Format = Literal["", "json"] | dict[str, Any]
Think = bool | Literal["low", "medium", "high"]
KeepAlive = float | str


class _Generation(msgspec.Struct, kw_only=True):
    """What /api/chat and /api/generate share."""

    model: ModelName
    stream: bool = True
    format: Format | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    think: Think | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.logprobs or self.top_logprobs:
            _refuse("logprobs", "logprobs are not supported; omit the field or send false")
        if isinstance(self.format, dict):
            check_nesting(self.format, "format")
        if self.think not in (None, False):
            raise msgspec.ValidationError(
                "think is not supported: cortex models have no separate thinking channel"
                " - at `$.think`"
            )
        if self.keep_alive is not None:
            parse_duration(self.keep_alive)


class ChatRequest(_Generation, kw_only=True):
    messages: list[Message] = msgspec.field(default_factory=list)
    tools: list[Tool] | None = None

    @property
    def nothing_to_generate(self) -> bool:
        """No messages: Ollama's way to load (or, with keep_alive 0, unload) a model."""
        return not self.messages


class GenerateRequest(_Generation, kw_only=True):
    prompt: str = ""
    system: str | None = None
    images: list[str] | None = None
    suffix: str | None = None
    template: str | None = None
    raw: bool = False
    context: list[int] | None = None
    width: int | None = None  # image generation (Ollama's experimental fields)
    height: int | None = None
    steps: int | None = None

    @property
    def nothing_to_generate(self) -> bool:
        """No prompt and no images: Ollama's way to load or unload a model."""
        return not self.prompt and not self.images

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("width", "height", "steps"):
            if getattr(self, field) is not None:
                _refuse(field, "image generation is not supported")
        if self.suffix:
            _refuse("suffix", "suffix (fill-in-the-middle) is not supported on /api/generate")
        if self.template:
            _refuse("template", "template is not supported: the model's own template is used")
        if self.raw:
            _refuse("raw", "raw prompts are not supported: the model's own template is used")
        if self.context:
            _refuse("context", "context is not supported: cortex keeps no token history")


class ShowRequest(msgspec.Struct, kw_only=True):
    model: ModelName | None = None
    name: ModelName | None = None  # the older spelling
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.model is None and self.name is None:
            raise msgspec.ValidationError("Object missing required field `model`")

    @property
    def model_name(self) -> str:
        return self.model or self.name or ""


class EmbedRequest(msgspec.Struct, kw_only=True):
    """/api/embed (``input``) and the older /api/embeddings (``prompt``)."""

    model: ModelName
    input: InputText | Annotated[list[InputText], msgspec.Meta(max_length=MAX_INPUTS)] = ""
    prompt: InputText | None = None  # /api/embeddings (the older route) sends one prompt
    truncate: bool = True  # cut inputs to the context (Ollama's default) instead of a 400
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=65536)] | None = None

    def __post_init__(self) -> None:
        if self.keep_alive is not None:
            parse_duration(self.keep_alive)

    @property
    def inputs(self) -> list[str]:
        """What to embed; empty (no input, ``""`` or ``[]``) means "load the model", as in
        Ollama."""
        if self.prompt is not None:
            return [self.prompt] if self.prompt else []
        if isinstance(self.input, str):
            return [self.input] if self.input else []
        return list(self.input)


def _refuse(field: str, why: str) -> None:
    raise msgspec.ValidationError(f"{why} - at `$.{field}`")


# --------------------------------------------------------------------------- durations

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$")
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(value: KeepAlive) -> float:
    """Seconds for Ollama's keep_alive: a number of seconds, or a Go duration ("5m", "1h30m",
    "-1m"); a negative value means "forever" and is returned as -1. Raises ValidationError."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if not _DURATION.match(text):
                raise msgspec.ValidationError(
                    f"keep_alive {value!r} is not a duration (seconds, or like 5m, 1h30m, -1)"
                    " - at `$.keep_alive`"
                ) from None
            sign = -1.0 if text.startswith("-") else 1.0
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise msgspec.ValidationError("keep_alive must be finite - at `$.keep_alive`")
    return -1.0 if seconds < 0 else seconds


# --------------------------------------------------------------------------- responses


class ModelDetails(msgspec.Struct, kw_only=True, omit_defaults=False):
    parent_model: str = ""
    format: str = "safetensors"
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""


class ListedModel(msgspec.Struct, kw_only=True):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagsResponse(msgspec.Struct):
    models: list[ListedModel]


class RunningModel(msgspec.Struct, kw_only=True):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int


class PsResponse(msgspec.Struct):
    models: list[RunningModel]


class ShowResponse(msgspec.Struct, kw_only=True):
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class VersionResponse(msgspec.Struct):
    version: str


class OutToolCall(msgspec.Struct, kw_only=True):
    function: ToolCallFunction
    id: str | None = None


class OutMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``role`` and ``content`` are always sent (clients require them), ``tool_calls`` only
    when there are some."""

    role: Literal["assistant"]
    content: str
    tool_calls: list[OutToolCall] | None = None


DoneReason = Literal["stop", "length", "load", "unload"]


class _Timing(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The final object's statistics (durations in nanoseconds)."""

    model: str
    created_at: str
    done: bool
    done_reason: DoneReason | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class ChatChunk(_Timing, kw_only=True, omit_defaults=True):
    """One /api/chat object: a stream piece, the final one, or the whole non-stream answer."""

    message: OutMessage


class GenerateChunk(_Timing, kw_only=True, omit_defaults=True):
    response: str


class EmbedResponse(msgspec.Struct, kw_only=True):
    model: str
    embeddings: list[list[float]]
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0


class EmbeddingResponse(msgspec.Struct):
    """/api/embeddings, the older route: one vector."""

    embedding: list[float]


class ErrorBody(msgspec.Struct):
    error: str
