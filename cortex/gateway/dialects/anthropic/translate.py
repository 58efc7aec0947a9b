"""Anthropic Messages <-> OpenAI Chat Completions, both directions, streaming included.

Neurons speak only OpenAI, so this is the one place the Anthropic dialect is understood. All
functions are pure (apart from fresh random ids) and raise ``InvalidRequest`` for input the
local models cannot honour, so the client gets a 400 that says why instead of a silent drop.

Choices that are not forced by either spec:
- Text blocks of one message are joined with a blank line: local chat templates render string
  content most reliably, and separate text blocks mean separate paragraphs.
- ``tool_result`` blocks become ``role: tool`` messages placed before the rest of their user turn
  (OpenAI requires tool messages right after the assistant's calls). ``is_error`` prefixes the
  content with "Error: ". Images in a tool result move into the user message that follows, since
  OpenAI tool messages carry text only.
- ``system`` and every ``role: "system"`` message (Claude Code sends them mid-conversation) are
  merged, in order, into one leading system message: chat templates accept a system message
  only first. The cost: a system message that first appears in a later turn changes the
  leading prompt, so that request misses the prefix cache (Claude Code 2.1.197 sends its one
  system message from the first turn on, so its sessions keep their prefix).
- Per-request noise is removed from the system prompt (Claude Code's
  ``x-anthropic-billing-header: ...; cch=<random>;`` line), so every turn of a session starts
  with byte-identical tokens and the neuron's prefix cache can reuse them.
- ``thinking`` becomes ``reasoning_effort`` (``disabled``: none; ``enabled``: on) and
  ``thinking_token_budget`` (``budget_tokens``), which the neuron turns into the chat
  template's thinking switch and a think block closed when its budget is spent.
- Thinking blocks are dropped (a local model cannot verify their signatures); documents, server
  tools and file-id images are refused. Images inside a tool result, for a model without vision,
  become a short text note (a screenshot tool must not end the session); an image in the user's
  own words stays a 400.
- Tool arguments that are not a JSON object become ``{"_raw": "<arguments>"}``: the client's
  tool validation then reports the problem back to the model, which can retry, instead of the
  whole turn failing. Streams hold a tool call's argument fragments until its block closes and
  then relay them unchanged when they form a JSON object (else the ``_raw`` form), so the
  ``input_json_delta`` pieces always concatenate to valid JSON.
- Usage: Anthropic counts cached prompt tokens apart, so ``input_tokens`` is the prompt minus
  the neuron's ``prompt_tokens_details.cached_tokens`` and ``cache_read_input_tokens`` the rest.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, assert_never

import msgspec

from cortex.errors import InvalidRequest, UpstreamError
from cortex.protocol import anthropic as an
from cortex.protocol import openai as oa

_encoder = msgspec.json.Encoder()


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def new_tool_use_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def _block_type(block: msgspec.Struct) -> str:
    return str(block.__struct_config__.tag)


def _join(texts: list[str]) -> str:
    return "\n\n".join(texts)


BILLING_HEADER = "x-anthropic-billing-header:"
IMAGE_NOTE = "[image omitted: this model does not accept images]"


# --------------------------------------------------------------------------- request


def messages_to_openai(
    req: an.MessagesRequest, model_id: str, vision: bool
) -> oa.ChatCompletionRequest:
    """The OpenAI request a neuron serves for an Anthropic one; ``vision``: accepts images."""
    messages: list[oa.Message] = []
    system = _system_prompt(req.system, req.messages)
    if system:
        messages.append(oa.SystemMessage(content=system))
    for message in req.messages:
        if message.role == "user":
            messages += _user_messages(message.content, model_id, vision)
        elif message.role == "assistant":
            messages.append(_assistant_message(message.content))
    tool_choice, parallel = _tool_choice(req.tool_choice, req.tools) if req.tools else (None, None)
    level = _effort(req)
    effort, budget = _thinking(req.thinking, _EFFORT[level] if level else None)
    return oa.ChatCompletionRequest(
        model=model_id,
        messages=messages,
        stream=req.stream,
        stream_options=oa.StreamOptions(include_usage=True) if req.stream else None,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        max_tokens=req.max_tokens,
        stop=list(req.stop_sequences) if req.stop_sequences else None,
        tools=[_tool(t) for t in req.tools] if req.tools else None,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        user=req.metadata.user_id if req.metadata else None,
        response_format=_response_format(req),
        reasoning_effort=effort,
        thinking_token_budget=budget,
    )


# Anthropic's effort levels onto OpenAI's (``max`` has no OpenAI twin: the highest there is).
_EFFORT: dict[str, oa.ReasoningEffort] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "xhigh",
}


def _effort(req: an.MessagesRequest) -> str | None:
    return req.output_config.effort if req.output_config else None


def _response_format(req: an.MessagesRequest) -> oa.ResponseFormat | None:
    """Structured outputs (``output_config.format``, or the beta's ``output_format``) become a
    JSON-schema response format, which the neuron enforces with a grammar."""
    fmt = (req.output_config.format if req.output_config else None) or req.output_format
    if fmt is None:
        return None
    schema = oa.JsonSchemaFormat(name="output", schema=fmt.schema, strict=True)
    return oa.ResponseFormat(type="json_schema", json_schema=schema)


def _thinking(
    thinking: an.ThinkingConfig | None, effort: oa.ReasoningEffort | None
) -> tuple[oa.ReasoningEffort | None, int | None]:
    """Anthropic's ``thinking`` as OpenAI's ``reasoning_effort`` (which reaches the chat
    template's switch, Qwen3's ``enable_thinking``, where it has one) and vLLM's
    ``thinking_token_budget``: ``disabled`` turns thinking off; ``enabled`` on (at ``effort``,
    else medium) within ``budget_tokens``; ``adaptive`` (or none) leaves it to ``effort`` and
    the template's default."""
    if thinking is None:
        return effort, None
    if thinking.type == "disabled":
        return "none", None
    if thinking.type == "enabled":
        return effort or "medium", thinking.budget_tokens
    return effort, None


def _system_prompt(system: str | list[an.TextBlock] | None, messages: list[an.Message]) -> str:
    """``system`` then every system message's text, in order, without per-request noise."""
    texts = _texts(system or [], "system")
    for i, message in enumerate(messages):
        if message.role == "system":
            texts += _texts(message.content, f"messages[{i}]")
    return _join([t for t in map(_without_billing_header, texts) if t])


def _texts(content: str | Sequence[an.RequestBlock], where: str) -> list[str]:
    if isinstance(content, str):
        return [content]
    texts = []
    for block in content:
        if not isinstance(block, an.TextBlock):
            raise InvalidRequest(f"{where}: system content takes text blocks only")
        texts.append(block.text)
    return texts


def _without_billing_header(text: str) -> str:
    if BILLING_HEADER not in text:
        return text
    lines = text.split("\n")
    return "\n".join(line for line in lines if not line.startswith(BILLING_HEADER)).strip()


def _user_messages(
    content: str | list[an.RequestBlock], model_id: str, vision: bool
) -> list[oa.Message]:
    """One user turn: its tool results first (as tool messages), then the rest, if any."""
    if isinstance(content, str):
        return [oa.UserMessage(content=content)]
    results: list[oa.Message] = []
    parts: list[oa.ContentPart] = []
    for block in content:
        match block:
            case an.ToolResultBlock():
                text, images = _tool_result(block, model_id, vision)
                results.append(oa.ToolMessage(content=text, tool_call_id=block.tool_use_id))
                parts += images
            case an.TextBlock():
                parts.append(oa.TextPart(block.text))
            case an.ImageBlock():
                parts.append(_image(block, model_id, vision))
            case an.ThinkingBlock() | an.RedactedThinkingBlock():
                pass
            case _:
                raise InvalidRequest(f"{_block_type(block)} blocks are not supported in user turns")
    if parts:
        results.append(oa.UserMessage(content=_user_content(parts)))
    return results


def _user_content(parts: list[oa.ContentPart]) -> oa.Content:
    texts = [p.text for p in parts if isinstance(p, oa.TextPart)]
    return _join(texts) if len(texts) == len(parts) else parts


def _tool_result(
    block: an.ToolResultBlock, model_id: str, vision: bool
) -> tuple[str, list[oa.ContentPart]]:
    """The tool message text, and the images it carried (for the user message after it)."""
    texts: list[str] = []
    images: list[oa.ContentPart] = []
    if isinstance(block.content, str):
        texts.append(block.content)
    else:
        for part in block.content:
            if isinstance(part, an.TextBlock):
                texts.append(part.text)
            elif vision:
                images.append(_image(part, model_id, vision))
            else:
                texts.append(IMAGE_NOTE)
    text = _join(texts)
    return ("Error: " + text if block.is_error else text), images


def _image(block: an.ImageBlock, model_id: str, vision: bool) -> oa.ContentPart:
    if not vision:
        raise InvalidRequest(f"model {model_id} does not accept images")
    source = block.source
    if source.type == "base64" and source.media_type and source.data:
        url = f"data:{source.media_type};base64,{source.data}"
    elif source.type == "url" and source.url:
        url = source.url
    else:
        raise InvalidRequest(f"image source type {source.type!r} is not supported")
    return oa.ImagePart(oa.ImageURL(url))


def _assistant_message(content: str | list[an.RequestBlock]) -> oa.AssistantMessage:
    if isinstance(content, str):
        return oa.AssistantMessage(content=content)
    texts: list[str] = []
    calls: list[oa.ToolCall] = []
    for block in content:
        match block:
            case an.TextBlock():
                texts.append(block.text)
            case an.ToolUseBlock():
                arguments = _encoder.encode(block.input).decode()
                calls.append(
                    oa.ToolCall(id=block.id, function=oa.FunctionCall(block.name, arguments))
                )
            case an.ThinkingBlock() | an.RedactedThinkingBlock():
                pass
            case _:
                raise InvalidRequest(
                    f"{_block_type(block)} blocks are not supported in assistant turns"
                )
    text = _join(texts) if texts or not calls else None
    return oa.AssistantMessage(content=text, tool_calls=calls or None)


def _tool(tool: an.ToolDef) -> oa.Tool:
    if tool.type not in (None, "custom"):
        raise InvalidRequest(f"tool type {tool.type!r} is not supported (tool {tool.name!r})")
    function = oa.FunctionDef(
        name=tool.name,
        description=tool.description,
        parameters=tool.input_schema,
        strict=tool.strict,
    )
    return oa.Tool(function=function)


def _tool_choice(
    choice: an.ToolChoice | None, tools: list[an.ToolDef]
) -> tuple[oa.ToolChoice | None, bool | None]:
    """(tool_choice, parallel_tool_calls); parallel is only sent when the client disables it.
    A named tool must be one of ``tools`` (as Anthropic checks): the neuron forces that call."""
    match choice:
        case None:
            return None, None
        case an.ToolChoiceNone():
            return "none", None
        case an.ToolChoiceAuto():
            mapped: oa.ToolChoice = "auto"
        case an.ToolChoiceAny():
            mapped = "required"
        case an.ToolChoiceTool():
            if all(tool.name != choice.name for tool in tools):
                raise InvalidRequest(
                    f"tool_choice.name: tool {choice.name!r} is not in tools",
                    param="tool_choice.name",
                )
            mapped = oa.NamedToolChoice(function=oa.ToolChoiceFunction(choice.name))
        case _:
            assert_never(choice)
    return mapped, (False if choice.disable_parallel_tool_use else None)


# --------------------------------------------------------------------------- response


def stop_reason(
    finish: oa.FinishReason | None, saw_tools: bool, matched_stop: str | None
) -> an.StopReason:
    if finish == "length":
        return "max_tokens"
    if finish == "content_filter":
        return "refusal"
    if finish == "tool_calls" or saw_tools:
        return "tool_use"
    return "stop_sequence" if matched_stop else "end_turn"


def tool_input(arguments: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_raw": arguments}


def openai_to_messages(
    resp: oa.ChatCompletion, model: str, matched_stop: str | None = None
) -> an.MessagesResponse:
    """A complete Anthropic response; ``matched_stop``: the stop sequence the output ended on."""
    if not resp.choices:
        raise UpstreamError("upstream returned no choices")
    choice = resp.choices[0]
    message = choice.message
    content: list[an.OutBlock] = [an.OutText(message.content)] if message.content else []
    for call in message.tool_calls or []:
        args = tool_input(call.function.arguments)
        content.append(an.OutToolUse(new_tool_use_id(), call.function.name, args))
    reason = stop_reason(choice.finish_reason, bool(message.tool_calls), matched_stop)
    return an.MessagesResponse(
        id=new_message_id(),
        model=model,
        content=content,
        stop_reason=reason,
        stop_sequence=matched_stop if reason == "stop_sequence" else None,
        usage=an.Usage(
            input_tokens=resp.usage.prompt_tokens - cached_tokens(resp.usage),
            output_tokens=resp.usage.completion_tokens,
            cache_read_input_tokens=cached_tokens(resp.usage),
        ),
    )


def cached_tokens(usage: oa.Usage) -> int:
    details = usage.prompt_tokens_details
    return details.cached_tokens if details is not None else 0


# --------------------------------------------------------------------------- stream
