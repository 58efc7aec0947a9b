"""Constraints compiled to llguidance grammars, cached by content hash (issue 21).

Why llguidance rather than xgrammar (both tried on a Claude Code tool set, bench/constraints.py
and the harness README): it has no dependencies (xgrammar pulls triton and a TVM runtime, ~300 MB
on a CPU box), compiles a schema lazily in milliseconds, computes a SmolLM2 mask in ~0.1 ms, and
drops the GIL while it does, so masks are filled while the forward pass runs. Its Lark dialect
embeds JSON schemas (``%json``), which is exactly a tool call: the format's tags around a JSON
object.

A compiled grammar is a pristine ``LLMatcher``; every sequence gets a ``deep_copy`` (~0.2 ms), so
an agent's second turn with the same tools compiles nothing. The cache is shared by the event
loop's threads (``prepare``) and the decode worker, hence the lock.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import llguidance
import llguidance.hf
from transformers import PreTrainedTokenizerBase

from cortex.errors import InvalidRequest
from cortex.neuron.constraints import Constraint, JsonAnswer, ToolSchema

CACHE_SIZE = 64  # distinct grammars kept (a tool set, a schema); a session reuses one or two

# Compact JSON as models write it (no free whitespace: a small model otherwise pads with
# newlines forever); unknown schema keywords are ignored rather than refused, since clients'
# tool schemas carry annotations ($schema, title, examples) no grammar needs.
_JSON_STYLE = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "lenient": True,
}


def lark_for(constraint: Constraint, literal: Callable[[str], str] = json.dumps) -> str:
    """The whole reply's grammar (a JSON answer, forced tool calls) or, for lazy tool calls, the
    grammar of what follows the opening tag. ``literal`` writes a tag (``GrammarCache.literal``)."""
    if isinstance(constraint, JsonAnswer):
        return "start: " + _json(constraint.schema)
    bodies = [f"tool_{i}" for i in range(len(constraint.tools))]
    rules = [f"tool_{i}: {_json(_call_schema(tool))}" for i, tool in enumerate(constraint.tools)]
    close = literal(constraint.close)
    if constraint.forced:
        call = f'{literal(constraint.open)} "\\n" body "\\n" {close}'
        start = "start: call" + (' ("\\n" call)*' if constraint.parallel else "")
        head = [start, f"call: {call}"]
    else:  # after the trigger: the body, then the closing tag
        head = [f'start: ("\\n" | " ")? body "\\n"? {close}']
    return "\n".join([*head, "body: " + " | ".join(bodies), *rules])


def _call_schema(tool: ToolSchema) -> dict[str, Any]:
    """``{"name": NAME, "arguments": PARAMETERS}``; the parameters' ``$defs`` move to the root
    so their ``#/$defs/...`` references still resolve once nested."""
    params = dict(tool.parameters) or {"type": "object"}
    hoisted: dict[str, Any] = {
        key: params.pop(key) for key in ("$defs", "definitions") if key in params
    }
    params.pop("$schema", None)
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
        **hoisted,
    }


def _json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps({**_bounded(schema), "x-guidance": _JSON_STYLE})


NUMBER_LIMIT = 10**15
"""Numbers without bounds get these (and so no exponent): JSON allows ``85e553535201554``, which
no client's decoder holds (msgspec and JavaScript overflow to infinity); a random-weight model
writes such numbers, and a reply that does not parse is what constraints are there to prevent."""

_DATA_KEYS = frozenset({"const", "enum", "default", "examples"})  # values, not schemas


def _bounded(schema: Any) -> Any:
    """``schema`` with ``NUMBER_LIMIT`` bounds on every number or integer that has none."""
    if isinstance(schema, list):
        return [_bounded(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _DATA_KEYS else _bounded(v) for k, v in schema.items()}
    kinds = out.get("type")
    kinds = set(kinds) if isinstance(kinds, list) else {kinds}
    if kinds & {"number", "integer"}:
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -NUMBER_LIMIT
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = NUMBER_LIMIT
    return out


class GrammarCache:
    """Compiled grammars of one model's tokenizer, least recently used dropped first."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
        # ~0.7 s for a 49k-token vocabulary: built on first use, not at load time.
        self._hf = tokenizer
        self._vocab_size = vocab_size
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[bytes, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self.compiles = 0  # grammars compiled (not found in the cache), for tests and benches

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf,  # type: ignore[arg-type]  # a fast tokenizer (loading.py)
                    n_vocab=self._vocab_size,
                )
            return self._tokenizer

    def literal(self, tag: str) -> str:
        """A tag in Lark: the token itself (``<[id]>``) when the vocabulary has it as one added
        token (Qwen's and the demo's ``<tool_call>``), which a model emits whole and llguidance
        does not match against text; else the quoted text."""
        if tag in self._hf.get_added_vocab():
            return f"<[{self._hf.convert_tokens_to_ids(tag)}]>"
        return json.dumps(tag)

    def text_of(self, token: int) -> bytes:
        """A token's bytes as the reply holds them (an added token's own text)."""
        tokenizer = self.tokenizer
        if tokenizer.is_special_token(token):
            return str(self._hf.decode([token])).encode()
        return bytes(tokenizer.decode_bytes([token]))

    def compile(self, constraint: Constraint) -> str:
        """``constraint``'s grammar, compiled into the cache (a lazy tool call's too, though no
        matcher is needed until the model opens a call), so a schema the compiler rejects is a
        400 before any byte is sent. Returns the grammar, for ``matcher``."""
        grammar = lark_for(constraint, self.literal)
        field = "response_format" if isinstance(constraint, JsonAnswer) else "tools"
        self.matcher(grammar, field)
        return grammar

    def matcher(self, grammar: str, field: str = "response_format") -> llguidance.LLMatcher:
        """A fresh matcher at the start of ``grammar``. Raises InvalidRequest naming ``field``
        when the grammar (a client's schema) cannot be compiled."""
        tokenizer = self.tokenizer
        key = hashlib.sha256(grammar.encode()).digest()
        with self._lock:
            pristine = self._compiled.get(key)
            if pristine is not None:
                self._compiled.move_to_end(key)
                return pristine.deep_copy()
        built = llguidance.LLMatcher(
            tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0
        )
        if built.is_error():
            raise InvalidRequest(
                f"cannot constrain to this schema: {built.get_error()}", param=field
            )
        with self._lock:
            self.compiles += 1
            self._compiled[key] = built
            while len(self._compiled) > CACHE_SIZE:
                self._compiled.popitem(last=False)
        return built.deep_copy()
