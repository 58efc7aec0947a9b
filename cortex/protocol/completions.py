"""OpenAI (legacy) Completions wire shapes: ``POST /v1/completions``, a raw prompt continued.

Editors' autocomplete (Continue, llama.vscode, Tabby, edit prediction) sends these with a
``suffix`` for fill-in-the-middle. One prompt per request: OpenAI's batch form (a list of
prompts, ``n``, ``best_of``) is refused with a 400 naming the field rather than half served.
The sampling fields are chat's (penalties, ``logit_bias``, vLLM's ``repetition_penalty``) and
map onto the harness the same way (``neuron.prompt.sampling_params``); ``logprobs`` is this
route's integer (the chosen token's and up to that many alternatives), answered in its own
shape (``CompletionLogprobs``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from cortex.protocol.bounds import check_logit_bias, check_normal, refuse
from cortex.protocol.openai import (
    SAMPLING_FLOATS,
    FinishReason,
    LogitBias,
    MaxTokens,
    Seed,
    StopStr,
    StreamOptions,
    Temperature,
    TopK,
    TopP,
    Usage,
)

TokenId = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
PromptText = Annotated[str, msgspec.Meta(max_length=4_000_000)]
# A string; token ids; or a one-element list holding either (some clients always send a list).
# msgspec unions hold one array type, so the list form is checked in __post_init__.
Prompt = (
    PromptText
    | Annotated[
        list[PromptText | TokenId | list[TokenId]], msgspec.Meta(min_length=1, max_length=1_000_000)
    ]
)

DEFAULT_MAX_TOKENS = 16  # OpenAI's own default for this route (vLLM's too)


class CompletionRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    prompt: Prompt
    suffix: PromptText | None = None
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    seed: Seed | None = None
    stop: StopStr | Annotated[list[StopStr], msgspec.Meta(max_length=16)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    ignore_eos: bool = False  # vLLM's extension, as on chat completions
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1
    best_of: Annotated[int, msgspec.Meta(ge=1, le=1)] | None = None
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)] | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)] | None = None
    repetition_penalty: Annotated[float, msgspec.Meta(gt=0.0, le=10.0)] | None = None  # vLLM's
    logit_bias: Annotated[dict[str, LogitBias], msgspec.Meta(max_length=1024)] | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        for name in SAMPLING_FLOATS:
            check_normal(getattr(self, name, None), name)
        self._check_prompt()
        check_logit_bias(self.logit_bias)
        if self.echo and self.suffix is not None:
            refuse("echo", "echo cannot be combined with suffix")

    def _check_prompt(self) -> None:
        prompt = self.prompt
        if isinstance(prompt, str):
            return
        if all(isinstance(item, int) for item in prompt):
            return
        if len(prompt) != 1:
            refuse("prompt", "one prompt per request: a string or a list of token ids")
        inner = prompt[0]
        if isinstance(inner, list) and not inner:
            refuse("prompt", "a token-id prompt needs at least one id")

    @property
    def single_prompt(self) -> str | list[int]:
        """The one prompt: a string or token ids (the one-element list form unwrapped)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt[0], int):
            return prompt  # type: ignore[return-value]
        return prompt[0]  # type: ignore[return-value]

    @property
    def logprob_count(self) -> int | None:
        """Alternatives per token asked for; None: no logprobs."""
        return self.logprobs

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionLogprobs(msgspec.Struct, kw_only=True):
    """The legacy logprobs shape: per generated token its text, log-probability, the most
    likely alternatives (text -> logprob) and where it starts in the choice's ``text``."""

    tokens: list[str] = msgspec.field(default_factory=list)
    token_logprobs: list[float] = msgspec.field(default_factory=list)
    top_logprobs: list[dict[str, float]] = msgspec.field(default_factory=list)
    text_offset: list[int] = msgspec.field(default_factory=list)


class CompletionChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None
    stop_reason: str | None = None  # vLLM's extension: the stop string that ended it


class Completion(msgspec.Struct, kw_only=True):
    """A whole answer, and (with ``choices`` of deltas) each chunk of a stream."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
