"""Incremental detokenisation that never emits half a UTF-8 character.

Byte-level BPE splits multi-byte characters across tokens; decoding such a prefix yields U+FFFD.
Decoding a growing window and emitting only the new suffix also keeps the tokenizer's
context-dependent spacing right (the same scheme as TGI and vLLM).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas; one instance per sequence, not thread-safe."""

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # tokens before this index have been emitted as text

    def add(self, token_id: int) -> str:
        """Append one token; return the text that became complete (possibly "")."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(prefix_text) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(prefix_text) :]

    def flush(self) -> str:
        """Text still held back (an incomplete character at the end of the stream)."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(prefix_text) :]
