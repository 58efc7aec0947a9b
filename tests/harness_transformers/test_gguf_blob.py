"""A GGUF without a .gguf suffix (an Ollama blob) loads like any GGUF, and its kept conversion
goes to cortex's cache, not into the other program's store."""

from __future__ import annotations

from pathlib import Path

import pytest
from cortex_transformers import gguf_cache
from cortex_transformers.demo import build_tokenizer
from cortex_transformers.demo_gguf import write_demo_gguf

from .conftest import load

HELLO = [{"role": "user", "content": "hi"}]


def test_an_ollama_blob_loads_and_chats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORTEX_CACHE", str(tmp_path / "cortex-cache"))
    blobs = tmp_path / "ollama" / "blobs"
    blobs.mkdir(parents=True)
    blob = write_demo_gguf(blobs / ("sha256-" + "ab" * 32))
    model = load(blob, dtype="float32")
    try:
        ids = model.encode_chat(HELLO, None)
        text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        # The GGUF's tokenizer is the demo tokenizer: the same ids for the same text.
        assert ids == build_tokenizer(1024, 0)(text)["input_ids"]
        assert model._tokenizer.decode(ids) == text
    finally:
        model.unload()
    assert sorted(p.name for p in blobs.iterdir()) == [blob.name], "the store is not written to"
    kept = gguf_cache.converted(str(blob), "float32")
    assert kept is not None and kept.is_relative_to(tmp_path / "cortex-cache" / "converted")
    again = load(blob, dtype="float32")  # from the kept conversion this time
    try:
        assert again.encode_chat(HELLO, None) == ids
    finally:
        again.unload()
