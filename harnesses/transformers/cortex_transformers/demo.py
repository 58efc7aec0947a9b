"""A Qwen3-architecture model with random weights and a locally trained tokenizer, built offline.

It exists so that the whole stack (neuron, gateway, tool calling, benchmarks) can run on any
machine in seconds without a download. Its output is gibberish, but its shapes, chat template,
special tokens and EOS handling are those of a real Qwen3 checkpoint. Everything is derived from
``seed``, so two builds with the same seed are byte-identical.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertModel,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

Size = Literal["tiny", "small"]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PLAIN_TOKENS = ["<tool_call>", "</tool_call>", "<think>", "</think>"]
# Qwen2.5-Coder's fill-in-the-middle tokens, added (after training) with ``fim=True``.
FIM_TOKENS = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>"]
EMBED_HIDDEN = 64
MATRYOSHKA_DIMENSIONS = [64, 32, 16]

# Qwen2/Qwen3 pre-tokenizer split pattern.
_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# (tokenizer vocab, hidden, layers, heads, kv heads, intermediate, model vocab)
_SHAPES: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "tiny": (1024, 64, 2, 4, 2, 128, 1024),
    "small": (8192, 512, 8, 8, 4, 1536, 32000),
}

CHAT_TEMPLATE = (
    resources.files("cortex_transformers").joinpath("chat_template.jinja").read_text("utf-8")
)

_SYLLABLES = [
    c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "ee")
]
_EXTRA = ["é", "ü", "ñ", "ß", "日本", "中文", "Привет", "λ", "→", "✓", "😀", "🚀"]


def _corpus(rng: random.Random, lines: int) -> Iterator[str]:
    """Synthetic text: pseudo-words, numbers, code-ish punctuation, chat markup and tool JSON."""
    for i in range(lines):
        words = [
            "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))
            for _ in range(rng.randint(3, 14))
        ]
        if i % 7 == 0:
            words.append(rng.choice(_EXTRA))
        if i % 5 == 0:
            words.append(str(rng.randint(0, 99999)))
        line = " ".join(words).capitalize() + rng.choice([".", "?", "!", ",", ":", ";"])
        if i % 11 == 0:
            call = {"name": words[0], "arguments": {words[1]: words[2], "n": i}}
            line = f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
        elif i % 13 == 0:
            line = f"<|im_start|>user\n{line}<|im_end|>\n<|im_start|>assistant\n"
        yield line + "\n"


def build_tokenizer(vocab_size: int, seed: int, fim: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (Qwen's split regex) on the synthetic corpus; ``fim`` adds the
    FIM tokens after training, so every other id is the same as without them."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(random.Random(seed), 4000), trainer=trainer)
    tok.add_tokens(PLAIN_TOKENS)
    if fim:
        tok.add_special_tokens(FIM_TOKENS)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def _id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    return int(tokenizer.convert_tokens_to_ids(token))  # type: ignore[arg-type]


def build_config(size: Size, tokenizer: PreTrainedTokenizerFast) -> Qwen3Config:
    _, hidden, layers, heads, kv_heads, intermediate, model_vocab = _SHAPES[size]
    vocab = max(model_vocab, len(tokenizer))
    return Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=4096,
        # A random model with tied embeddings repeats its last token forever.
        tie_word_embeddings=False,
        bos_token_id=_id(tokenizer, "<|endoftext|>"),
        eos_token_id=_id(tokenizer, "<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )


def write_demo_model(
    directory: Path, *, seed: int = 0, size: Size = "tiny", fim: bool = False
) -> Path:
    """Write the demo model (weights, config, tokenizer, generation config) into ``directory``;
    ``fim``: its tokenizer has fill-in-the-middle tokens (for /v1/completions with a suffix)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(_SHAPES[size][0], seed, fim=fim)
    config = build_config(size, tokenizer)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    im_end, endoftext = _id(tokenizer, "<|im_end|>"), _id(tokenizer, "<|endoftext|>")
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=[im_end, endoftext], pad_token_id=endoftext, bos_token_id=endoftext
    )
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def write_demo_embedding_model(directory: Path, *, seed: int = 0) -> Path:
    """A tiny BERT-style encoder with the demo tokenizer and sentence-transformers files (mean
    pooling, normalised) and ``matryoshka_dimensions``: the ``task = "embed"`` test model."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(_SHAPES["tiny"][0], seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=EMBED_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.matryoshka_dimensions = MATRYOSHKA_DIMENSIONS  # read as vLLM reads it (embedding.py)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    st = "sentence_transformers.models."
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": st + "Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": st + "Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": st + "Normalize"},
    ]
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": EMBED_HIDDEN, "pooling_mode_mean_tokens": True}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (directory / "2_Normalize").mkdir(exist_ok=True)
    return directory
