"""A reply's thinking budget: the think block is closed once it holds ``budget`` tokens.

Reasoning models write ``<think> ... </think>`` before their answer; Anthropic's
``thinking.budget_tokens`` and vLLM's ``thinking_token_budget`` cap what goes inside. The
budget counts the tokens generated inside a think block (all blocks of the reply together);
when it is spent, the next token is forced to be the closing tag (every other logit -inf,
logits.py), as vLLM and llama.cpp do, and the answer follows. A prompt whose template already
opened the block (its generation prompt ends inside ``<think>``) counts from the first token.
Written by the decode worker only, through ``observe``.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

OPEN, CLOSE = "<think>", "</think>"
TAIL = 32  # prompt tokens looked at for an opened block


class ThinkTokens:
    """The ids of ``<think>`` and ``</think>``, when the tokenizer has each as one token."""

    def __init__(self, open_id: int, close_id: int) -> None:
        self.open_id, self.close_id = open_id, close_id

    @classmethod
    def find(cls, tokenizer: PreTrainedTokenizerBase) -> ThinkTokens | None:
        vocab = tokenizer.get_vocab()
        if OPEN in vocab and CLOSE in vocab:
            return cls(vocab[OPEN], vocab[CLOSE])
        return None  # such a model has no think block to cut short


class ThinkBudget:
    def __init__(self, budget: int, tokens: ThinkTokens, prompt: list[int]) -> None:
        self.left = budget
        self._tokens = tokens
        self.inside = _opened(prompt, tokens)

    @property
    def forced(self) -> int | None:
        """The token the next step must take (the closing tag), None while the budget lasts."""
        return self._tokens.close_id if self.inside and self.left <= 0 else None

    def observe(self, token: int) -> None:
        """Follow one sampled token: into or out of a block, or one more inside."""
        if token == self._tokens.close_id:
            self.inside = False
        elif token == self._tokens.open_id:
            self.inside = True
        elif self.inside:
            self.left -= 1


def _opened(prompt: list[int], tokens: ThinkTokens) -> bool:
    """Whether the prompt ends inside a think block: a template that opens it puts the tag in
    its generation prompt, the last few tokens."""
    for token in reversed(prompt[-TAIL:]):
        if token == tokens.close_id:
            return False
        if token == tokens.open_id:
            return True
    return False
