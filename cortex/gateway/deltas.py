"""Walking one chat completion chunk's deltas in order, for the stream translators.

The Anthropic and Responses translators (dialects/anthropic/stream.py,
dialects/responses/stream.py) turn the same
pieces of a chunk (text, tool-call fragments, the finish reason) into their own events; the
walk over a chunk is written once here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from cortex.protocol import openai as oa

E = TypeVar("E")


def walk(
    chunk: oa.ChatCompletionChunk,
    on_text: Callable[[str], list[E]],
    on_call: Callable[[oa.ToolCallDelta], list[E]],
    finish: oa.FinishReason | None,
) -> tuple[list[E], oa.FinishReason | None]:
    """The events for every text piece and tool-call fragment of ``chunk``, in order, and the
    finish reason so far (``finish`` unless the chunk ends the choice)."""
    events: list[E] = []
    for choice in chunk.choices:
        if choice.delta.content:
            events += on_text(choice.delta.content)
        for call in choice.delta.tool_calls or []:
            events += on_call(call)
        finish = choice.finish_reason or finish
    return events, finish
