"""POST /v1/embeddings: one vector per input from a model loaded with ``task = "embed"``.

decode -> lease (404 / 429, 400 naming the task for a chat model) -> admission (an embedding
batch takes a ``max_concurrency`` place like a sequence) -> ``LoadedModel.embed`` (the harness
batches the inputs off the event loop) -> float lists or base64 (little-endian float32, what the
openai SDKs send by default and decode).
"""

from __future__ import annotations

import base64
import functools
import struct
import time

import msgspec
from aiohttp import web

from cortex.neuron.lifecycle import ModelManager
from cortex.neuron.metrics import METRICS
from cortex.neuron.outcome import recording
from cortex.protocol import decode
from cortex.protocol.embeddings import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage

_encoder = msgspec.json.Encoder()


async def handle(request: web.Request, manager: ModelManager) -> web.Response:
    body = decode(await request.read(), EmbeddingRequest)
    with recording(functools.partial(request.app[METRICS].finished, body.model)) as outcome:
        async with manager.lease(body.model, task="embed") as lease:
            await manager.admit(lease)
            outcome.admitted = time.perf_counter()
            result = await lease.model.embed(body.inputs, body.dimensions, truncate=body.truncate)
        outcome.prompt_tokens = result.prompt_tokens
        data = [
            Embedding(index=i, embedding=encode_vector(vector, body.encoding_format))
            for i, vector in enumerate(result.vectors)
        ]
        usage = EmbeddingUsage(
            prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens
        )
        answer = EmbeddingList(data=data, model=body.model, usage=usage)
        return web.Response(body=_encoder.encode(answer), content_type="application/json")


def encode_vector(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
