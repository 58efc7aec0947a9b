from __future__ import annotations

import msgspec

from cortex.neuron.chunks import ChunkEncoder
from cortex.protocol import openai


def test_pre_encoded_content_chunk_equals_the_struct_encoding() -> None:
    enc = ChunkEncoder("chatcmpl-1", 123, "tiny")
    text = 'he said "hi"\n\u00e9\x00'
    chunk = openai.ChatCompletionChunk(
        id="chatcmpl-1",
        created=123,
        model="tiny",
        choices=[openai.ChunkChoice(delta=openai.Delta(content=text))],
    )
    assert enc.content(text) == b"data: " + msgspec.json.encode(chunk) + b"\n\n"


def test_usage_chunk_has_no_choices() -> None:
    raw = ChunkEncoder("c", 1, "m").usage(openai.Usage(1, 2, 3))
    decoded = msgspec.json.decode(raw.removeprefix(b"data: "))
    assert decoded["choices"] == [] and decoded["usage"]["total_tokens"] == 3
