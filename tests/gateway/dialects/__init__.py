"""Tests of the Ollama and Gemini dialects; ``chunk`` builds the upstream stream chunks their
writers are fed."""

from __future__ import annotations

from cortex.protocol import openai as oa


def chunk(
    content: str | None = None,
    calls: list[oa.ToolCallDelta] | None = None,
    finish: oa.FinishReason | None = None,
    usage: oa.Usage | None = None,
) -> oa.ChatCompletionChunk:
    """One chat completion chunk with a single choice."""
    choice = oa.ChunkChoice(delta=oa.Delta(content=content, tool_calls=calls), finish_reason=finish)
    return oa.ChatCompletionChunk(id="c", created=0, model="m", choices=[choice], usage=usage)
