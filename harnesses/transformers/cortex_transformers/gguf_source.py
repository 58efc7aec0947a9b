"""GGUF sources: the single-file format llama.cpp and Ollama users already have.

transformers (with the ``gguf`` package) loads a GGUF's weights dequantised to a torch dtype and
its tokenizer with the embedded chat template; this module adds what cortex needs around that:

- ``tensor_shapes`` reads the tensor table from the header alone (no weight is read, ~0.1 s for
  a 50k-token vocabulary), so the size estimate can refuse a load that cannot fit. gguf's own
  ``GGUFReader`` maps every tensor and array field and took ~6 s on a 98 MB file here.
- ``requantize``: transformers refuses a bitsandbytes ``quantization_config`` together with
  ``gguf_file``, so a GGUF asked for as 4bit/8bit is loaded dequantised and its state dict is
  loaded again through the bitsandbytes path (peak memory: both copies, briefly).

Header layout (GGUF v2/v3, little-endian): magic ``GGUF``, u32 version, u64 tensor count, u64
metadata count, the metadata key/value pairs, then per tensor: name, u32 n_dims, u64 dims, u32
ggml type, u64 offset. Strings are a u64 length and UTF-8 bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from transformers import BitsAndBytesConfig, PreTrainedModel

from cortex.neuron import sources

SUFFIX = sources.GGUF_SUFFIX
_MAGIC = sources.GGUF_MAGIC
# Metadata value types -> byte size; 8 is a string and 9 an array (typed, counted).
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class GGUFHeaderError(ValueError):
    """The file is not a GGUF this reader understands (truncated, wrong magic or version)."""


def is_gguf(path: str) -> bool:
    """A file named ``*.gguf``, or one that starts with GGUF's magic (Ollama's blobs)."""
    file = Path(path)
    return file.is_file() and (file.suffix == SUFFIX or sources.is_gguf(file))


def split(path: str) -> tuple[str, str]:
    """(directory, file name): transformers takes ``from_pretrained(directory, gguf_file=name)``."""
    file = Path(path)
    return str(file.parent), file.name


def tensor_shapes(file: Path) -> list[tuple[str, list[int]]]:
    """(name, dims) of every tensor in the header. Raises GGUFHeaderError."""
    with file.open("rb") as f:
        if f.read(4) != _MAGIC:
            raise GGUFHeaderError(f"{file} is not a GGUF file (bad magic)")
        (version,) = _unpack(f, "<I")
        if version not in (2, 3):
            raise GGUFHeaderError(f"{file}: GGUF version {version} is not supported (2 or 3)")
        tensors, fields = _unpack(f, "<QQ")
        for _ in range(fields):
            _skip_string(f)
            (kind,) = _unpack(f, "<I")
            _skip_value(f, kind)
        shapes = []
        for _ in range(tensors):
            name = _read_string(f)
            (dims,) = _unpack(f, "<I")
            shape = list(_unpack(f, f"<{dims}Q"))
            _unpack(f, "<IQ")  # ggml type, data offset
            shapes.append((name, shape))
    return shapes


def requantize(
    model: PreTrainedModel, quantization: BitsAndBytesConfig, device: str
) -> PreTrainedModel:
    """The dequantised ``model`` loaded again through bitsandbytes onto ``device``."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF marker; bitsandbytes brings its own
    state = model.state_dict()
    return type(model).from_pretrained(  # type: ignore[no-any-return]
        None,
        config=config,
        state_dict=state,
        dtype=model.dtype,
        quantization_config=quantization,
        device_map={"": device},
    )


def _unpack(f: BinaryIO, fmt: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFHeaderError(f"{getattr(f, 'name', 'GGUF')}: header ends early")
    return struct.unpack(fmt, data)


def _read_string(f: BinaryIO) -> str:
    (length,) = _unpack(f, "<Q")
    return f.read(length).decode("utf-8", errors="replace")


def _skip_string(f: BinaryIO) -> None:
    (length,) = _unpack(f, "<Q")
    f.seek(length, 1)


def _skip_value(f: BinaryIO, kind: int) -> None:
    if kind in _FIXED:
        f.seek(_FIXED[kind], 1)
    elif kind == _STRING:
        _skip_string(f)
    elif kind == _ARRAY:
        item, count = _unpack(f, "<IQ")
        if item in _FIXED:
            f.seek(_FIXED[item] * count, 1)
        else:
            for _ in range(count):
                _skip_value(f, item)
    else:
        raise GGUFHeaderError(f"{getattr(f, 'name', 'GGUF')}: unknown metadata type {kind}")
