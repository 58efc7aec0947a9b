"""OpenAI Embeddings wire shapes: ``POST /v1/embeddings``.

``input`` is a string, a list of strings, token ids, or a list of token-id lists (msgspec unions
hold one array type, so the list forms are told apart in ``__post_init__``). Codebase indexers
(Continue, Open WebUI's RAG) send lists of chunks; the neuron embeds them as one batch.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from cortex.protocol.bounds import refuse

MAX_INPUTS = 2048  # OpenAI's own limit on inputs per request
InputText = Annotated[str, msgspec.Meta(max_length=1_000_000)]
TokenId = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Input = (
    InputText
    | Annotated[
        list[InputText | TokenId | list[TokenId]], msgspec.Meta(min_length=1, max_length=1_000_000)
    ]
)


class EmbeddingRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    input: Input
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=65536)] | None = None
    user: str | None = None
    # cortex extension: cut each input to the model's context (keeping its start) instead of
    # refusing it; Ollama's /api/embed asks for this by default (its ``truncate``).
    truncate: bool = False

    def __post_init__(self) -> None:
        items = self.inputs
        if len(items) > MAX_INPUTS:
            refuse("input", f"at most {MAX_INPUTS} inputs per request, got {len(items)}")
        for item in items:
            if isinstance(item, list) and not item:
                refuse("input", "a token-id input needs at least one id")

    @property
    def inputs(self) -> list[str | list[int]]:
        """The inputs as a list: strings or token-id lists, one per embedding."""
        given = self.input
        if isinstance(given, str):
            return [given]
        if all(isinstance(item, int) for item in given):
            return [given]  # type: ignore[list-item]
        if any(isinstance(item, int) for item in given):
            refuse("input", "expected a string, a list of strings, or token ids")
        return given  # type: ignore[return-value]


class Embedding(msgspec.Struct, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string of little-endian float32 for "base64"


class EmbeddingUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
