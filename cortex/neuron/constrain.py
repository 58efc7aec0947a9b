"""From a chat request to the constraint its reply must meet (issue 21; constraints.py).

Precedence, one constraint per reply: a forced ``tool_choice`` (the reply is calls), else a
``response_format`` (the reply is that JSON), else tools under ``auto`` (free text, each call the
model opens constrained). A harness without constraints keeps the older, weaker behaviour where
one exists (a forced choice starts the reply with the call's opening text, prompt.py) and refuses
what only a grammar can promise (a JSON format, a ``strict`` tool) with a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

from cortex.errors import InvalidRequest
from cortex.neuron.constraints import Constraint, JsonAnswer, ToolCalls, ToolSchema
from cortex.neuron.tools import ToolParser
from cortex.protocol import openai

ANY_OBJECT: dict[str, Any] = {"type": "object"}


def constraint_for(
    request: openai.ChatCompletionRequest,
    parser: type[ToolParser] | None,
    *,
    supported: bool,
    model_id: str,
) -> Constraint | None:
    """The reply's constraint, None when it is free. ``parser`` is the model's tool-call
    parser when tools are in use; ``supported`` whether its harness constrains decoding."""
    tools = _tool_constraint(request, parser)
    answer = _json_answer(request.response_format)
    if not supported:
        _refuse_unconstrained(request, answer, model_id)
        return None
    if tools is not None and tools.forced:
        return tools
    return answer or tools


def _tool_constraint(
    request: openai.ChatCompletionRequest, parser: type[ToolParser] | None
) -> ToolCalls | None:
    if not request.tools or request.tool_choice == "none" or parser is None:
        return None
    if parser.markup is None:
        return None
    choice = request.tool_choice
    tools = request.tools
    if isinstance(choice, openai.NamedToolChoice):
        tools = [t for t in tools if t.function.name == choice.function.name]
    schemas = tuple(
        ToolSchema(name=t.function.name, parameters=t.function.parameters or ANY_OBJECT)
        for t in tools
    )
    forced = choice is not None and choice not in ("auto", "none")
    return ToolCalls(
        tools=schemas,
        open=parser.markup[0],
        close=parser.markup[1],
        forced=forced,
        parallel=request.parallel_tool_calls is not False,
    )


def _json_answer(fmt: openai.ResponseFormat | None) -> JsonAnswer | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.json_schema is not None and fmt.json_schema.schema:
        return JsonAnswer(schema=fmt.json_schema.schema)
    return JsonAnswer(schema=ANY_OBJECT)


def _refuse_unconstrained(
    request: openai.ChatCompletionRequest, answer: JsonAnswer | None, model_id: str
) -> None:
    why = f"the harness serving {model_id} cannot constrain its output"
    if answer is not None:
        raise InvalidRequest(f"{why}; send response_format text", param="response_format")
    for i, tool in enumerate(request.tools or ()):
        if tool.function.strict:
            field = f"tools[{i}].function.strict"
            raise InvalidRequest(f"{why}; send strict false or omit it", param=field)
