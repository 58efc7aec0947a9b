"""What a request may ask a harness to guarantee about the shape of its output (issue 21).

The neuron maps the chat fields onto these once (``constrain.py``; the gateway has already
turned Responses' ``text.format``, Anthropic's ``output_config.format``, Ollama's ``format`` and
Gemini's ``responseSchema`` into ``response_format``). ``response_format`` becomes a
``JsonAnswer``; tools with a forced ``tool_choice`` (OpenAI ``required`` or a named function,
Anthropic ``any`` or ``tool``) become ``ToolCalls`` with ``forced`` set, and ``auto`` becomes
the same structure behind a lazy trigger on the tool-call format's opening tag. A harness that
declares ``SamplingFeatures.constraints`` compiles them to a grammar and masks the logits; one
that does not gets the request refused with a 400 naming the field, never a reply that only
looks constrained.

A tool call's body is the hermes/Qwen JSON object ``{"name": NAME, "arguments": ARGS}``, ``NAME``
one of ``tools`` and ``ARGS`` valid against that tool's ``parameters`` schema, between ``open``
and ``close`` (``<tool_call>`` / ``</tool_call>``): the layout ``tools.HermesParser`` reads back.
"""

from __future__ import annotations

from typing import Any

import msgspec


class ToolSchema(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    parameters: dict[str, Any]  # a JSON schema; {} accepts any object


class JsonAnswer(msgspec.Struct, frozen=True, kw_only=True, tag="json"):
    """The whole reply is one JSON value valid against ``schema`` (``{"type": "object"}`` for
    OpenAI's ``json_object``)."""

    schema: dict[str, Any]


class ToolCalls(msgspec.Struct, frozen=True, kw_only=True, tag="tool_calls"):
    """Tool calls in the model's own markup, each naming one of ``tools`` with valid arguments.

    ``forced``: the reply is calls only, from its first token. Otherwise the reply is free text
    until the model writes ``open``; the call that follows is constrained, and after ``close``
    the text is free again. ``parallel`` False allows one call, then only the end of the reply.
    """

    tools: tuple[ToolSchema, ...]
    open: str
    close: str
    forced: bool
    parallel: bool = True


Constraint = JsonAnswer | ToolCalls


class SamplingFeatures(msgspec.Struct, frozen=True, kw_only=True):
    """Which optional sampling fields a harness honours; the neuron refuses the others by name."""

    constraints: bool = False  # JsonAnswer and ToolCalls
    penalties: bool = False  # frequency_penalty, presence_penalty, repetition_penalty
    logit_bias: bool = False
    max_top_logprobs: int = -1  # -1: no logprobs; 0: the chosen token's; k: up to k alternatives
    max_n: int = 1  # choices per request
    thinking_budget: bool = False  # SamplingParams.thinking_budget: a think block is cut short


class TopLogprob(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    bytes: list[int]
    logprob: float


class TokenLogprob(msgspec.Struct, frozen=True, kw_only=True):
    """One generated token's log-probability under the model (log-softmax of its raw logits,
    before penalties, temperature or a grammar's mask) and the ``top`` most likely ones."""

    token: str
    bytes: list[int]
    logprob: float
    top: list[TopLogprob] = []
