"""OpenAI Responses <-> Chat Completions: the request, and the complete (non-stream) response.

The Responses counterpart of translate.py (Anthropic). Pure apart from fresh random ids and the
clock; input the local models cannot honour raises ``InvalidRequest`` naming the item.

Choices that are not forced by either spec:
- ``instructions`` and every developer/system message, in order, become one leading system
  message (paragraphs joined by a blank line): chat templates accept a system message only
  first (translate.py merges Anthropic's system messages the same way).
- ``function_call`` items join the assistant message before them (or start one), so parallel
  calls stay one assistant turn; ``function_call_output`` items become tool messages. Images in
  a function output move into a user message after the tool messages (tool messages carry text);
  for a model without vision they become translate.py's short note instead, so a screenshot
  tool does not end the session (an image in the user's own message is still a 400).
- ``reasoning`` items are dropped (another model's reasoning, often encrypted); ``item_reference``
  is refused (nothing is stored to resolve it); so are ``input_file`` parts and file-id images.
- Tools other than ``function`` are dropped and not echoed back: cortex runs none of them.
- ``finish_reason`` length is status ``incomplete`` with reason ``max_output_tokens``.
- An absent ``max_output_tokens`` means "up to the context" (OpenAI's rule for this API): a
  neuron is sent the largest ``max_tokens`` it accepts, a ceiling it caps at what the prompt
  leaves, instead of falling to its own 4096 default. Codex never sends a limit and fails the
  turn on an incomplete answer, such as a long file written through a tool call. A plain
  upstream keeps its own default.

The stream direction is stream.py.
"""

from __future__ import annotations

import secrets
import time
import typing

import msgspec

from cortex.errors import InvalidRequest, UpstreamError
from cortex.gateway.dialects.anthropic.translate import IMAGE_NOTE
from cortex.protocol import openai as oa
from cortex.protocol import responses as rs

# --------------------------------------------------------------------------- ids


def new_id(prefix: str) -> str:
    """A fresh item or response id in OpenAI's style (``resp_...``, ``msg_...``, ``fc_...``)."""
    return f"{prefix}_{secrets.token_hex(16)}"


def response_skeleton(req: rs.ResponsesRequest) -> rs.Response:
    """The response object as created: the request's settings echoed, no output yet."""
    return rs.Response(
        id=new_id("resp"),
        created_at=int(time.time()),
        status="in_progress",
        model=req.model,
        output=[],
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        parallel_tool_calls=req.parallel_tool_calls,
        temperature=req.temperature,
        top_p=req.top_p,
        tool_choice=req.tool_choice or "auto",
        tools=req.function_tools,
        text=req.text or rs.TextConfig(),
        reasoning=req.reasoning,
        truncation=req.truncation or "disabled",
        prompt_cache_key=req.prompt_cache_key,
        metadata=req.metadata or {},
        user=req.user,
    )


# --------------------------------------------------------------------------- request


def responses_to_openai(
    req: rs.ResponsesRequest, model_id: str, vision: bool, neuron: bool = True
) -> oa.ChatCompletionRequest:
    """The chat request a neuron serves for a Responses one; ``vision``: accepts images;
    ``neuron``: a cortex neuron serves it (else a plain upstream, see the module notes)."""
    tools = [
        oa.Tool(
            function=oa.FunctionDef(
                name=t.name, description=t.description, parameters=t.parameters, strict=t.strict
            )
        )
        for t in req.function_tools
    ]
    return oa.ChatCompletionRequest(
        model=model_id,
        messages=_Conversation(model_id, vision).build(req),
        stream=req.stream,
        stream_options=oa.StreamOptions(include_usage=True) if req.stream else None,
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_output_tokens or (WHOLE_CONTEXT if neuron else None),
        tools=tools or None,
        tool_choice=_tool_choice(req.tool_choice) if tools else None,
        parallel_tool_calls=None if req.parallel_tool_calls or not tools else False,
        user=req.user,
        response_format=_response_format(req.text),
        reasoning_effort=_effort(req.reasoning),
    )


def _effort(reasoning: rs.Reasoning | None) -> oa.ReasoningEffort | None:
    """``reasoning.effort`` as chat's ``reasoning_effort`` (the chat template's thinking
    switch where it has one); a level chat does not know changes nothing."""
    effort = reasoning.effort if reasoning is not None else None
    return effort if effort in typing.get_args(oa.ReasoningEffort) else None  # type: ignore[return-value]


class _Conversation:
    """Input items -> chat messages, in one pass."""

    def __init__(self, model_id: str, vision: bool) -> None:
        self._model_id = model_id
        self._vision = vision
        self._system: list[str] = []  # the system prompt, in paragraphs
        self._messages: list[oa.Message] = []
        self._images: list[oa.ContentPart] = []  # from function outputs, for a user message

    def build(self, req: rs.ResponsesRequest) -> list[oa.Message]:
        if req.instructions:
            self._system.append(req.instructions)
        if isinstance(req.input, str):
            self._messages.append(oa.UserMessage(content=req.input))
        else:
            for i, item in enumerate(req.input):
                self._item(item, f"input[{i}]")
        self._flush_images()
        head: list[oa.Message] = []
        if self._system:
            head.append(oa.SystemMessage(content="\n\n".join(self._system)))
        return head + self._messages

    def _item(self, item: rs.InputItem, where: str) -> None:
        if not isinstance(item, rs.FunctionCallOutputItem):
            self._flush_images()
        match item:
            case rs.MessageItem(role="system" | "developer"):
                self._system.append(self._text(item.content, where))
            case rs.MessageItem(role="user"):
                self._messages.append(oa.UserMessage(content=self._user(item.content, where)))
            case rs.MessageItem():
                self._messages.append(oa.AssistantMessage(content=self._text(item.content, where)))
            case rs.FunctionCallItem():
                self._call(item)
            case rs.FunctionCallOutputItem():
                self._output(item, where)
            case rs.ReasoningItem():
                pass
            case rs.ItemReference():
                raise InvalidRequest(
                    "item_reference items are not supported: cortex stores no items; send "
                    "the item itself",
                    param=where,
                )

    def _call(self, item: rs.FunctionCallItem) -> None:
        call = oa.ToolCall(id=item.call_id, function=oa.FunctionCall(item.name, item.arguments))
        last = self._messages[-1] if self._messages else None
        if isinstance(last, oa.AssistantMessage):
            last.tool_calls = [*(last.tool_calls or []), call]
        else:
            self._messages.append(oa.AssistantMessage(tool_calls=[call]))

    def _output(self, item: rs.FunctionCallOutputItem, where: str) -> None:
        if isinstance(item.output, str):
            text = item.output
        else:
            parts = self._parts(item.output, f"{where}.output", tool_output=True)
            text = "\n\n".join(p.text for p in parts if isinstance(p, oa.TextPart))
            self._images += [p for p in parts if not isinstance(p, oa.TextPart)]
        self._messages.append(oa.ToolMessage(content=text, tool_call_id=item.call_id))

    def _flush_images(self) -> None:
        if self._images:
            self._messages.append(oa.UserMessage(content=self._images))
            self._images = []

    def _user(self, content: str | list[rs.ContentPart], where: str) -> oa.Content:
        if isinstance(content, str):
            return content
        parts = self._parts(content, f"{where}.content")
        if all(isinstance(p, oa.TextPart) for p in parts):
            return "\n\n".join(p.text for p in parts if isinstance(p, oa.TextPart))
        return parts

    def _text(self, content: str | list[rs.ContentPart], where: str) -> str:
        """Content that must be text only (system, developer, assistant)."""
        if isinstance(content, str):
            return content
        parts = self._parts(content, f"{where}.content")
        if not all(isinstance(p, oa.TextPart) for p in parts):
            raise InvalidRequest("only text parts are supported here", param=f"{where}.content")
        return "\n\n".join(p.text for p in parts if isinstance(p, oa.TextPart))

    def _parts(
        self,
        content: list[rs.ContentPart] | list[rs.FunctionOutputPart],
        where: str,
        tool_output: bool = False,
    ) -> list[oa.ContentPart]:
        out: list[oa.ContentPart] = []
        for j, part in enumerate(content):
            match part:
                case rs.InputText() | rs.OutputText():
                    out.append(oa.TextPart(part.text))
                case rs.Refusal():
                    out.append(oa.TextPart(part.refusal))
                case rs.InputImage() if tool_output and not self._vision:
                    out.append(oa.TextPart(IMAGE_NOTE))
                case rs.InputImage():
                    out.append(self._image(part, f"{where}[{j}]"))
                case rs.InputFile():
                    raise InvalidRequest(
                        "input_file parts are not supported", param=f"{where}[{j}]"
                    )
        return out

    def _image(self, part: rs.InputImage, where: str) -> oa.ContentPart:
        if not self._vision:
            raise InvalidRequest(f"model {self._model_id} does not accept images", param=where)
        if not part.image_url:
            raise InvalidRequest("images by file_id are not supported; send image_url", param=where)
        return oa.ImagePart(oa.ImageURL(part.image_url, part.detail))


# The largest max_tokens a neuron accepts (openai.MaxTokens): as a ceiling, "the whole context".
WHOLE_CONTEXT: int = typing.get_args(oa.MaxTokens)[1].le


def _tool_choice(choice: rs.ToolChoice | None) -> oa.ToolChoice | None:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.type == "function" and choice.name:
        return oa.NamedToolChoice(function=oa.ToolChoiceFunction(choice.name))
    raise InvalidRequest(
        f"tool_choice type {choice.type!r} is not supported: cortex runs function tools only",
        param="tool_choice",
    )


def _response_format(text: rs.TextConfig | None) -> oa.ResponseFormat | None:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return oa.ResponseFormat(type="json_object")
    schema = oa.JsonSchemaFormat(name=fmt.name or "response", schema=fmt.schema, strict=fmt.strict)
    return oa.ResponseFormat(type="json_schema", json_schema=schema)


# --------------------------------------------------------------------------- response


def _usage(usage: oa.Usage | None) -> rs.Usage | None:
    if usage is None:
        return None
    details = usage.prompt_tokens_details
    return rs.Usage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=rs.InputTokensDetails(details.cached_tokens if details else 0),
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def incomplete(finish: oa.FinishReason | None) -> rs.IncompleteDetails | None:
    """Why a response with this finish reason is incomplete; None when it completed."""
    if finish == "length":
        return rs.IncompleteDetails("max_output_tokens")
    if finish == "content_filter":
        return rs.IncompleteDetails("content_filter")
    return None


def finished_response(
    skeleton: rs.Response,
    output: list[rs.OutputItem],
    finish: oa.FinishReason | None,
    usage: oa.Usage | None,
) -> rs.Response:
    """The final response object: status, output and usage filled into the skeleton."""
    details = incomplete(finish)
    return msgspec.structs.replace(
        skeleton,
        status="incomplete" if details else "completed",
        output=output,
        usage=_usage(usage),
        incomplete_details=details,
    )


def openai_to_response(resp: oa.ChatCompletion, skeleton: rs.Response) -> rs.Response:
    """The complete (non-stream) response object for a chat completion."""
    if not resp.choices:
        raise UpstreamError("upstream returned no choices")
    choice = resp.choices[0]
    status: rs.Status = "incomplete" if incomplete(choice.finish_reason) else "completed"
    output: list[rs.OutputItem] = []
    if choice.message.content:
        part = rs.OutputTextPart(text=choice.message.content)
        output.append(rs.OutputMessage(id=new_id("msg"), status=status, content=[part]))
    for call in choice.message.tool_calls or []:
        output.append(
            rs.FunctionCallOutput(
                id=new_id("fc"),
                call_id=call.id or new_id("call"),
                name=call.function.name,
                arguments=call.function.arguments,
                status="completed",
            )
        )
    return finished_response(skeleton, output, choice.finish_reason, resp.usage)
