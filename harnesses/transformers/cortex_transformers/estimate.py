"""Weight bytes a load will take, from safetensors or GGUF headers alone (no tensor is read).

Lets the neuron refuse a load that cannot fit (507) before spending minutes on it. bitsandbytes
quantizes 2-D linear weights only; embeddings, the LM head, norms and biases keep the load dtype.
A GGUF is dequantised to the load dtype, so its own quantization does not count. The CPU
kernels' "int8" / "int4" (cpu_quant.py) quantise a model loaded whole in the load dtype, so
their estimate is that whole load, the peak (the steady state, smaller, is reported once loaded).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

from cortex_transformers import gguf_source

_QUANTIZED_BYTES = {"4bit": 0.5 + 4 / 64, "8bit": 1.0 + 4 / 64}  # payload + per-block scales
_UNQUANTIZED_NAMES = ("embed", "lm_head", "wte", "wpe", "token_embd")
_GGUF_LM_HEAD = "output.weight"


def weight_bytes(path: Path, quantization: str, dtype: torch.dtype) -> int:
    """Bytes of the weights once loaded, for a directory of safetensors files or one GGUF file;
    0 when ``path`` holds neither."""
    element = torch.finfo(dtype).bits / 8
    total = 0.0
    for name, shape in _all_shapes(path):
        count = math.prod(shape)
        linear = (
            len(shape) == 2
            and name != _GGUF_LM_HEAD
            and not any(part in name for part in _UNQUANTIZED_NAMES)
        )
        total += count * (_QUANTIZED_BYTES.get(quantization, element) if linear else element)
    return int(total)


def _all_shapes(path: Path) -> list[tuple[str, list[int]]]:
    if path.is_file():
        return gguf_source.tensor_shapes(path) if gguf_source.is_gguf(str(path)) else []
    return [shape for file in sorted(path.glob("*.safetensors")) for shape in _tensor_shapes(file)]


def _tensor_shapes(file: Path) -> list[tuple[str, list[int]]]:
    # Layout: u64 little-endian header length, then a JSON header {name: {dtype, shape, ...}}.
    with file.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return [(name, meta["shape"]) for name, meta in header.items() if name != "__metadata__"]
