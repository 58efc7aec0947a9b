"""Stop strings: cut generated text at the first stop string, which is never emitted.

A stop string can arrive split across tokens ("<|us" + "er|>"), so the matcher holds back the
longest tail of the text that is still a prefix of some stop string and releases it only once it
can no longer become one. What comes out never depends on how the text was chunked.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """One per sequence; not thread-safe. With no stop strings it passes text straight through."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._firsts = frozenset(s[0] for s in self._stops)
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
        keep = self._partial_len(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """End of generation without a match: release what was held back."""
        held, self._held = self._held, ""
        return held

    def _partial_len(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop string."""
        longest = max(len(s) for s in self._stops) - 1
        for n in range(min(longest, len(buf)), 0, -1):
            tail = buf[-n:]
            if tail[0] in self._firsts and any(s.startswith(tail) for s in self._stops):
                return n
        return 0
