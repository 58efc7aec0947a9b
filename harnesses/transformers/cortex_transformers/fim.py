"""Fill-in-the-middle prompts from a tokenizer's own FIM tokens.

Code models trained for infilling mark the text before the cursor, the text after it and where
the middle goes with special tokens, spelt differently per family. ``find`` looks the spellings
up in the vocabulary (None: the model cannot infill, and a ``suffix`` is refused); ``encode``
builds the prompt ids in the family's order:

- PSM (prefix, suffix, middle): ``PRE prefix SUF suffix MID`` (Qwen2.5/Qwen3-Coder, StarCoder,
  SantaCoder, DeepSeek-Coder, CodeLlama, CodeGemma);
- SPM (suffix, prefix, middle): ``SUF suffix PRE prefix`` (Codestral, as mistral-common builds
  it; its model continues after the prefix).

The ids of prefix and suffix are tokenized with special-token spellings split into plain text
and spliced between the marker ids, so a file that happens to contain a marker's spelling
cannot forge one. (A raw prompt without ``suffix`` is the client's own template: there the
spellings are read as the tokens they name.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

# (prefix, suffix, middle, order), most common first.
SPELLINGS: tuple[tuple[str, str, str, Literal["psm", "spm"]], ...] = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "psm"),  # Qwen-Coder, CodeGemma
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "psm"),  # StarCoder
    ("<fim-prefix>", "<fim-suffix>", "<fim-middle>", "psm"),  # SantaCoder
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "psm"),  # DeepSeek-Coder
    ("▁<PRE>", "▁<SUF>", "▁<MID>", "psm"),  # CodeLlama
    ("[PREFIX]", "[SUFFIX]", "[MIDDLE]", "spm"),  # Codestral
)

# Tokens that end an infill (besides the model's EOS): they are never part of the middle.
END_SPELLINGS = (
    "<|fim_pad|>",
    "<|file_sep|>",
    "<|endoftext|>",
    "▁<EOT>",
    "<EOT>",
    "<|end_of_text|>",
)


@dataclass(frozen=True)
class FimTokens:
    prefix: int
    suffix: int
    middle: int
    order: Literal["psm", "spm"]


def find(tokenizer: PreTrainedTokenizerBase) -> FimTokens | None:
    """The tokenizer's FIM markers, or None when it has none."""
    vocab = tokenizer.get_vocab()
    for pre, suf, mid, order in SPELLINGS:
        if pre in vocab and suf in vocab and mid in vocab:
            return FimTokens(vocab[pre], vocab[suf], vocab[mid], order)
    return None


def end_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids that end generation for a model that infills (what exists of END_SPELLINGS)."""
    vocab = tokenizer.get_vocab()
    return frozenset(vocab[s] for s in END_SPELLINGS if s in vocab)


def encode(
    tokenizer: PreTrainedTokenizerBase, fim: FimTokens, prefix: str, suffix: str
) -> list[int]:
    """The infill prompt ids, led by the BOS the tokenizer puts before plain text (if any)."""
    pre = _plain(tokenizer, prefix)
    suf = _plain(tokenizer, suffix)
    if fim.order == "spm":
        body = [fim.suffix, *suf, fim.prefix, *pre]
    else:
        body = [fim.prefix, *pre, fim.suffix, *suf, fim.middle]
    return leading_specials(tokenizer) + body


def _plain(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))


def leading_specials(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """What the tokenizer puts before any text (a BOS, for Llama-style tokenizers): the ids it
    adds to "x" ahead of the ids of "x" alone."""
    plain = list(tokenizer.encode("x", add_special_tokens=False))
    full = list(tokenizer.encode("x", add_special_tokens=True))
    return full[: full.index(plain[0])] if plain and plain[0] in full else []
