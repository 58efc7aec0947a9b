"""A GGUF's conversion, kept beside the file so that a restart skips it.

transformers converts a GGUF on every load: it dequantises each tensor and rebuilds the
tokenizer from the header (SmolLM2-135M on a 2-core CPU: 30 s and 8.5 s). The first load saves
the result as a plain transformers directory next to the file; later loads read that instead
(0.1 s and 0.3 s) and get the same weights and tokenizer.

Layout, keyed by the file's content (a file replaced under the same name is converted again)::

    <the GGUF's directory>/.cortex-converted/<SHA-256 of the file, 16 hex digits>/
        tokenizer/   the tokenizer as converted (before any chat_template override)
        float32/     config, generation config and model.safetensors at that dtype (bfloat16/
                     on a GPU); the dequantised size: ~4 bytes a parameter in fp32, 2 in bf16

A GGUF not named ``*.gguf`` lives in another program's store (Ollama's ``blobs/sha256-...``):
its conversion goes to cortex's own cache instead, ``$CORTEX_CACHE/converted/<digest>/`` (by
default ``~/.cache/cortex/converted``), so that store is never written to.

Each directory is written under a temporary name and renamed once complete, so a crash never
leaves half a conversion. Best effort: where the model root is read-only (or the disk full) the
load goes on and the log says so in one line. Delete ``.cortex-converted`` to reclaim the space.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from cortex import starter
from cortex.neuron.sources import GGUF_SUFFIX

log = logging.getLogger(__name__)

CACHE_DIR = ".cortex-converted"
SHARED_DIR = "converted"  # under cortex's cache, for GGUFs in other programs' stores
TOKENIZER = "tokenizer"


def weights_part(dtype: torch.dtype) -> str:
    """The weights' directory name for a dtype: "float32", "bfloat16", "float16"."""
    return str(dtype).removeprefix("torch.")


def converted(path: str, part: str) -> Path | None:
    """The kept conversion of ``part`` of the GGUF at ``path``, if a load made one."""
    entry = _entry(path, part)
    if not entry.is_dir():
        return None
    log.info("%s: reading its %s from the kept conversion in %s", path, part, entry.parent)
    return entry


def keep(path: str, part: str, save: Callable[[Path], Any]) -> None:
    """Run ``save(directory)`` into a fresh directory and make it ``part``'s conversion."""
    try:
        entry = _entry(path, part)
        entry.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{part}-", dir=entry.parent))
        try:
            save(scratch)
            scratch.rename(entry)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # gone after a rename; else a leftover
    except OSError as exc:
        log.warning("%s: its conversion was not kept (%s); the next load converts again", path, exc)


def save_dequantised(model: PreTrainedModel, into: Path) -> None:
    """``save_pretrained`` for a model loaded from a GGUF: transformers refuses to save while
    the GGUF quantizer is attached, though the weights are plain tensors by then. Detached for
    the save only; the live model is left as it was."""
    quantizer = model.hf_quantizer
    config = getattr(model.config, "quantization_config", None)
    model.hf_quantizer = None  # type: ignore[assignment]
    if config is not None:
        del model.config.quantization_config
    try:
        model.save_pretrained(into)
    finally:
        model.hf_quantizer = quantizer
        if config is not None:
            model.config.quantization_config = config


def _entry(path: str, part: str) -> Path:
    file = Path(path)
    stat = file.stat()
    digest = _digest(str(file), stat.st_size, stat.st_mtime_ns)
    if file.suffix != GGUF_SUFFIX:  # a blob in another program's store: leave that store alone
        return starter.cache_dir() / SHARED_DIR / digest / part
    return file.parent / CACHE_DIR / digest / part


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256 (16 hex digits), once per process for an unchanged file (its size and
    mtime are part of the key: a changed file is hashed again). ~0.2 s per 100 MB."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]
