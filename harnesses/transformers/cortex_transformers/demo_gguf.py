"""A tiny Llama-architecture GGUF with the demo tokenizer: what llama.cpp and Ollama users have,
built offline in about a second (~0.9 MB) for tests.

The tokenizer is the demo model's byte-level BPE (demo.py), stored as GGUF's "gpt2" tokenizer
(token list, types and merges) with the demo chat template, so transformers rebuilds the same
ids from the file. The weights are random float32 tensors (output is gibberish; the same seed
gives the same file).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np

from cortex_transformers.demo import CHAT_TEMPLATE, build_tokenizer

# Token types in a GGUF vocabulary (llama.cpp's llama_token_type).
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4
_VOCAB, _HIDDEN, _LAYERS, _HEADS, _KV_HEADS, _FFN, _CONTEXT = 1024, 64, 2, 4, 2, 128, 4096


def write_demo_gguf(path: Path, *, seed: int = 0) -> Path:
    """Write the GGUF to ``path`` (any file name: Ollama's blobs have no suffix)."""
    tokenizer = build_tokenizer(_VOCAB, seed)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [""] * len(tokenizer)
    types = [_NORMAL] * len(tokenizer)
    for token, index in spec["model"]["vocab"].items():
        tokens[index] = token
    for added in spec["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = _CONTROL if added["special"] else _USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(_CONTEXT)
    writer.add_embedding_length(_HIDDEN)
    writer.add_block_count(_LAYERS)
    writer.add_feed_forward_length(_FFN)
    writer.add_head_count(_HEADS)
    writer.add_head_count_kv(_KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.convert_tokens_to_ids("<|endoftext|>"))  # type: ignore[arg-type]
    writer.add_eos_token_id(tokenizer.convert_tokens_to_ids("<|im_end|>"))  # type: ignore[arg-type]
    writer.add_pad_token_id(tokenizer.convert_tokens_to_ids("<|endoftext|>"))  # type: ignore[arg-type]
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in _weights(len(tokens), seed).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _weights(vocab: int, seed: int) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 weights (numpy shapes: [out, in])."""
    rng = np.random.default_rng(seed)
    kv = _KV_HEADS * _HIDDEN // _HEADS

    def random(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    weights = {"token_embd.weight": random(vocab, _HIDDEN)}
    for i in range(_LAYERS):
        for name, shape in [
            ("attn_q", (_HIDDEN, _HIDDEN)), ("attn_k", (kv, _HIDDEN)), ("attn_v", (kv, _HIDDEN)),
            ("attn_output", (_HIDDEN, _HIDDEN)), ("ffn_gate", (_FFN, _HIDDEN)),
            ("ffn_up", (_FFN, _HIDDEN)), ("ffn_down", (_HIDDEN, _FFN)),
        ]:  # fmt: skip
            weights[f"blk.{i}.{name}.weight"] = random(*shape)
        weights[f"blk.{i}.attn_norm.weight"] = np.ones(_HIDDEN, np.float32)
        weights[f"blk.{i}.ffn_norm.weight"] = np.ones(_HIDDEN, np.float32)
    weights["output_norm.weight"] = np.ones(_HIDDEN, np.float32)
    weights["output.weight"] = random(vocab, _HIDDEN)  # untied: see demo.py
    return weights
