"""From an OpenAI chat request to what a harness consumes: template dicts, a token budget and
sampling parameters. Pure functions; every rejection is an InvalidRequest naming the field.

Completion budget: the requested ``max_tokens`` (or ``max_completion_tokens``) capped at what
the context leaves. When a request sets neither, the cap is the model's ``default_max_tokens``
(models.toml), else ``DEFAULT_MAX_TOKENS``, so a chat client that omits the limit gets a reply
of chat length instead of one that runs on for minutes at temperature 1 (OpenAI's own default
is "the rest of the context"; the cap is ours).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import msgspec

from cortex.config import NO_SAMPLING_DEFAULTS, SamplingDefaults
from cortex.errors import ContextLengthExceeded, InvalidRequest
from cortex.neuron.constraints import Constraint
from cortex.neuron.harness import SamplingParams
from cortex.neuron.tools import ToolParser
from cortex.protocol import openai

DEFAULT_MAX_TOKENS = 1024  # docs/configuration.md, `default_max_tokens`

_args_decoder = msgspec.json.Decoder(dict[str, Any])


def template_messages(messages: list[openai.Message], *, vision: bool) -> list[dict[str, Any]]:
    """OpenAI messages -> chat-template dicts (role, content, tool_calls, tool_call_id).

    Text parts are joined with newlines; developer becomes system (chat templates know only
    system); assistant tool-call arguments are decoded from their JSON string into a dict, the
    shape Hugging Face templates render.
    """
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if isinstance(msg, openai.AssistantMessage):
            out.append(_assistant(msg, where, vision))
        elif isinstance(msg, openai.ToolMessage):
            content = _content(msg.content, f"{where}.content", vision)
            out.append({"role": "tool", "content": content, "tool_call_id": msg.tool_call_id})
        else:
            role = (
                "system" if isinstance(msg, openai.DeveloperMessage) else msg.__struct_config__.tag
            )
            out.append({"role": role, "content": _content(msg.content, f"{where}.content", vision)})
    return out


def template_tools(tools: list[openai.Tool] | None) -> list[dict[str, Any]] | None:
    return [msgspec.to_builtins(t) for t in tools] if tools else None


def tool_call_prefix(
    request: openai.ChatCompletionRequest, parser: type[ToolParser] | None, model_id: str
) -> str:
    """The text a forced ``tool_choice`` starts the assistant turn with; "" when not forced.

    "required" and a named tool are honoured through the parser's call prefix (tools.py), so the
    model can only continue a tool call; a model whose tool_parser cannot force one refuses
    them with a 400 rather than ignore them. (A name missing from ``tools`` was refused when the
    request was decoded.)
    """
    choice = request.tool_choice
    if not request.tools or choice is None or choice in ("auto", "none"):
        return ""
    name = choice.function.name if isinstance(choice, openai.NamedToolChoice) else None
    prefix = parser.call_prefix(name) if parser is not None else None
    if prefix is None:
        raise InvalidRequest(
            f'model {model_id} cannot honour a forced tool_choice: its tool_parser is "none" '
            'and cannot force a call (set tool_parser = "hermes" in its models.toml entry)',
            param="tool_choice",
        )
    return prefix


THINKING_OFF = ("none", "minimal")


def template_variables(
    request: openai.ChatCompletionRequest, readable: frozenset[str], model_id: str
) -> dict[str, Any]:
    """The chat-template variables a request sets: ``reasoning_effort`` becomes
    ``enable_thinking`` (false for none/minimal: Qwen3's switch) and ``reasoning_effort``
    (gpt-oss reads it) where the template reads them, and has no effect on a template with
    neither; vLLM's ``chat_template_kwargs`` go through as they are (over the effort's) and
    must name variables the template reads (``readable``), else a 400 naming the key."""
    variables: dict[str, Any] = {}
    if (effort := request.reasoning_effort) is not None:
        switch = {"enable_thinking": effort not in THINKING_OFF, "reasoning_effort": effort}
        variables = {name: value for name, value in switch.items() if name in readable}
    for key, value in (request.chat_template_kwargs or {}).items():
        if key not in readable:
            settable = ", ".join(sorted(readable)) or "none"
            raise InvalidRequest(
                f"the chat template of {model_id} does not read {key!r} "
                f"(the variables it reads: {settable})",
                param=f"chat_template_kwargs.{key}",
            )
        variables[key] = value
    return variables


def completion_budget(
    prompt_tokens: int, requested: int | None, context_length: int, default: int = 0
) -> int:
    """max_new_tokens for the request: ``requested`` (else ``default``, the model's own cap, or
    when that is 0 ``DEFAULT_MAX_TOKENS``), but never more than
    the context leaves. ``max_tokens`` is a ceiling, not a demand: Claude Code asks for 32000 or
    128000 on every request, more than most local contexts hold, and expects a truncated answer
    (finish "length") rather than a refusal. Only a prompt that leaves no room for one token
    raises ContextLengthExceeded. ``context_length`` 0 means unknown: no check.
    """
    wanted = requested if requested is not None else (default or DEFAULT_MAX_TOKENS)
    if context_length <= 0:
        return wanted
    if prompt_tokens >= context_length:
        raise prompt_too_long(prompt_tokens, context_length)
    return min(wanted, context_length - prompt_tokens)


def prompt_too_long(prompt_tokens: int, context_length: int) -> ContextLengthExceeded:
    """OpenAI's own error for messages that overflow the context (the gateway rewrites it
    into Anthropic's "prompt is too long" for Anthropic clients)."""
    return ContextLengthExceeded(
        f"This model's maximum context length is {context_length} tokens. However, your "
        f"messages resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
        param="messages",
    )


class SamplingRequest(Protocol):
    """The sampling fields chat and text completions share (``openai.ChatCompletionRequest``,
    ``completions.CompletionRequest``)."""

    @property
    def temperature(self) -> float | None: ...
    @property
    def top_p(self) -> float | None: ...
    @property
    def top_k(self) -> int | None: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def ignore_eos(self) -> bool: ...
    @property
    def frequency_penalty(self) -> float | None: ...
    @property
    def presence_penalty(self) -> float | None: ...
    @property
    def repetition_penalty(self) -> float | None: ...
    @property
    def logit_bias(self) -> dict[str, float] | None: ...
    @property
    def logprob_count(self) -> int | None: ...


def sampling_params(
    request: SamplingRequest,
    max_new_tokens: int,
    constraint: Constraint | None = None,
    defaults: SamplingDefaults = NO_SAMPLING_DEFAULTS,
    thinking_budget: int | None = None,
) -> SamplingParams:
    """A field the request omits takes the model's default (``Slot.sampling_defaults``), else
    OpenAI's: temperature 1.0, top_p 1.0; temperature 0 is greedy."""
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=_first(request.temperature, defaults.temperature, 1.0),
        top_p=_first(request.top_p, defaults.top_p, 1.0),
        top_k=_first(request.top_k, defaults.top_k, 0),
        seed=request.seed,
        ignore_eos=request.ignore_eos,
        constraint=constraint,
        frequency_penalty=request.frequency_penalty or 0.0,
        presence_penalty=request.presence_penalty or 0.0,
        repetition_penalty=_first(request.repetition_penalty, defaults.repetition_penalty, 1.0),
        logit_bias={int(k): v for k, v in request.logit_bias.items()} or None
        if request.logit_bias
        else None,
        logprobs=request.logprob_count,
        thinking_budget=thinking_budget,
    )


N = TypeVar("N", int, float)


def _first(asked: N | None, default: N | None, fallback: N) -> N:
    """The request's value, else the model's default, else ``fallback``."""
    if asked is not None:
        return asked
    return default if default is not None else fallback


def _assistant(msg: openai.AssistantMessage, where: str, vision: bool) -> dict[str, Any]:
    content = "" if msg.content is None else _content(msg.content, f"{where}.content", vision)
    entry: dict[str, Any] = {"role": "assistant", "content": content}
    if msg.reasoning_content:
        entry["reasoning_content"] = msg.reasoning_content
    if msg.tool_calls:
        entry["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.function.name,
                    "arguments": _arguments(
                        call.function.arguments, f"{where}.tool_calls[{j}].function.arguments"
                    ),
                },
            }
            for j, call in enumerate(msg.tool_calls)
        ]
    return entry


def _arguments(raw: str, where: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        return _args_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise InvalidRequest(
            f"Invalid value for '{where}': expected a JSON object encoded as a string.", param=where
        ) from None


def _content(content: openai.Content, where: str, vision: bool) -> Any:
    """A string for text-only content; the Hugging Face multimodal list when images are present
    and the model takes them."""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    parts: list[dict[str, str]] = []
    for j, part in enumerate(content):
        if isinstance(part, openai.TextPart):
            texts.append(part.text)
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, openai.ImagePart) and vision:
            parts.append({"type": "image", "url": part.image_url.url})
        else:
            kind = part.__struct_config__.tag
            raise InvalidRequest(
                f"Invalid value for '{where}[{j}]': this model does not accept {kind} input.",
                param=f"{where}[{j}]",
            )
    if len(parts) > len(texts):
        return parts
    return "\n".join(texts)
