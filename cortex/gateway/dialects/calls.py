"""Ids for tool calls in the dialects whose calls may carry none (Ollama, Gemini).

Chat completions pair each tool message with its call by id. ``Pairing`` remembers the calls
of the latest assistant turn and hands each answer the id of the earliest unanswered call of
the same tool name (else simply the earliest unanswered call, else a fresh id).
"""

from __future__ import annotations

import secrets


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


class Pairing:
    def __init__(self) -> None:
        self._pending: list[tuple[str, str]] = []  # (call id, tool name), unanswered

    def calls(self, calls: list[tuple[str, str]]) -> None:
        """A new assistant turn's calls, (id, name) in order; earlier ones are forgotten."""
        self._pending = list(calls)

    def answer(self, name: str | None) -> str:
        """The id of the call an answer from tool ``name`` (None: unnamed) belongs to."""
        for i, (call_id, call_name) in enumerate(self._pending):
            if name is None or call_name == name:
                del self._pending[i]
                return call_id
        if self._pending:
            return self._pending.pop(0)[0]
        return new_call_id()
