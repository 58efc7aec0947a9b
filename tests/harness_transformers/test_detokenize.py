from __future__ import annotations

from collections.abc import Sequence

from cortex_transformers.detokenize import IncrementalDetokenizer

# A byte-level "tokenizer": token i is the single byte i, like BPE's byte fallback.


def _decode(ids: Sequence[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def _stream(text: str) -> list[str]:
    detok = IncrementalDetokenizer(_decode)
    return [detok.add(b) for b in text.encode()]


def test_multibyte_character_is_held_until_complete() -> None:
    assert _stream("é") == ["", "é"]
    assert _stream("a🚀b") == ["a", "", "", "", "🚀", "b"]


def test_deltas_concatenate_to_the_text() -> None:
    text = "naïve 日本 ✓ done"
    assert "".join(_stream(text)) == text
    assert all("\ufffd" not in delta for delta in _stream(text))


def test_flush_releases_an_incomplete_tail() -> None:
    detok = IncrementalDetokenizer(_decode)
    assert detok.add(ord("x")) == "x"
    assert detok.add("🚀".encode()[0]) == ""
    assert detok.flush() == "\ufffd"
    assert detok.flush() == ""
