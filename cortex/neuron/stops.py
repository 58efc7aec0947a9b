"""Stop strings: cut generated text at the first stop string, which is never emitted.

A stop string can arrive split across tokens ("<|us" + "er|>"), so the matcher holds back the
longest tail of the text that is still a prefix of some stop string and releases it only once it
can no longer become one. What comes out never depends on how the text was chunked.
"""

from __future__ import annotations

from collections.abc import Sequence


class Holdback:
    """How much of a text's tail to hold back because the next token may complete a marker
    (a stop string, a tool-call tag): the longest suffix that is a proper prefix of one."""

    def __init__(self, markers: Sequence[str]) -> None:
        self._markers = tuple(m for m in markers if m)
        self._firsts = frozenset(m[0] for m in self._markers)
        self._longest = max((len(m) for m in self._markers), default=1) - 1

    def length(self, text: str) -> int:
        for n in range(min(self._longest, len(text)), 0, -1):
            tail = text[-n:]
            if tail[0] in self._firsts and any(m.startswith(tail) for m in self._markers):
                return n
        return 0


class StopMatcher:
    """One per sequence; not thread-safe. With no stop strings it passes text straight through."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._holdback = Holdback(self._stops)
        self._held = ""
        self.matched: str | None = None  # the stop string that ended the text, once one did

    def feed(self, text: str) -> str:
        """The text that is safe to emit now. After a match, ``matched`` names the stop string
        and the text up to it is returned; feeding more afterwards returns ""."""
        if self.matched:
            return ""
        if not self._stops:
            return text
        buf = self._held + text
        found = [(i, s) for s in self._stops if (i := buf.find(s)) >= 0]
        if found:
            cut, stop = min(found)
            self._held, self.matched = "", stop
            return buf[:cut]
        keep = self._holdback.length(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """End of generation without a match: release what was held back."""
        held, self._held = self._held, ""
        return held
