"""Hostile and heavy clients against a live gateway and neuron (the tiny demo model loaded;
one decode place and two queue places on the neuron, so it saturates at once).

Fuzz: every hostile body or header gets a 4xx in the client's dialect (OpenAI envelope,
Anthropic's on /v1/messages* and, off the OpenAI routes, for a request carrying
anthropic-version, Ollama's on /api/*, Google's on /v1beta/*), never a 5xx, and both processes
stay healthy. aiohttp's own parser rejections (a malformed head) are answered before any route
or dialect is known: those must be a 400, in any body.
Logs: no key, no traceback for a client hang-up.
Saturation: past the neuron's queue bound a request gets 429 with Retry-After at once; queued
streams wait longer than the gateway's idle_timeout_s, yet finish normally (the neuron sends
their headers and SSE heartbeats before admission) and the healthy node is never suspect.
One pair of processes serves all three (the tests do not depend on their order).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess
from tests.e2e.raw_http import request, send

pytestmark = pytest.mark.slow

CLIENT_KEY = "fuzz-client-key-5f1c0e"
ADMIN_KEY = "fuzz-admin-key-9a7b3d"
NEURON_TOKEN = "fuzz-neuron-token-c4e2a8"
SECRETS = (CLIENT_KEY, ADMIN_KEY, NEURON_TOKEN)
MODEL = {"id": "tiny", "source": "tiny", "context_length": 2048, "vram_gb": 0.1}
IDLE_S = 1.0  # the gateway's idle_timeout_s: longest silence it allows in a stream
# Seeds whose sampled replies run to 400 tokens on the demo model (others hit EOS early): each
# admitted stream holds the one decode place about a second.
LONG_SEEDS = (3, 4, 8, 9, 10, 12, 13, 15)


@pytest.fixture(scope="module")
def neuron(
    start_neuron: Callable[..., NeuronProcess],
    model_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> NeuronProcess:
    loops = tmp_path_factory.mktemp("loops")
    (loops / "loop-a").symlink_to(loops / "loop-b")
    (loops / "loop-b").symlink_to(loops / "loop-a")
    neuron = start_neuron(
        name="n1",
        token=NEURON_TOKEN,
        model_roots=[model_root, loops],
        models=[MODEL],
        preload=["tiny"],
        cpu_memory_budget_gb=2.0,
        max_concurrency=1,
        queue_depth=2,
        heartbeat_s=0.2,
    )
    neuron.wait_for(lambda s: [m["state"] for m in s["models"]] == ["loaded"], timeout=60)
    return neuron


@pytest.fixture(scope="module")
def gateway(
    neuron: NeuronProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw"),
        neurons={"n1": neuron},
        models=[MODEL],
        api_keys=[CLIENT_KEY],
        admin_keys=[ADMIN_KEY],
        max_body_mb=1.0,
        idle_timeout_s=IDLE_S,
    )
    yield gw
    gw.stop()


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    name: str
    role: str  # "gateway" or "neuron"
    data: bytes
    dialect: str | None  # "openai", "anthropic", "ollama", "gemini"; None: aiohttp's parser


OPENAI_AUTH: dict[str, str | bytes] = {"Authorization": f"Bearer {CLIENT_KEY}"}
ANTHROPIC_AUTH: dict[str, str | bytes] = {
    "x-api-key": CLIENT_KEY,
    "anthropic-version": "2023-06-01",
}
NEURON_AUTH: dict[str, str | bytes] = {"Authorization": f"Bearer {NEURON_TOKEN}"}
JSON = {"Content-Type": "application/json"}


def _deep(levels: int, leaf: str = "1") -> str:
    return '{"a":' * levels + leaf + "}" * levels


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


USER = [{"role": "user", "content": "hi"}]
LONG = "lorem ipsum " * 2000  # more tokens than the 2048 context


def _chat_bodies() -> list[tuple[str, bytes]]:
    """Hostile OpenAI chat bodies (also sent to the neuron, which speaks the same dialect)."""
    ok = {"model": "tiny", "messages": USER, "max_tokens": 2}
    deep_args = _deep(5000)  # a JSON string: decoded only when templating
    return [
        ("empty", b""),
        ("null", b"null"),
        ("array", b"[]"),
        ("truncated", b'{"model": "tiny", "messages": ['),
        ("not-utf8", b"\xff\xfe\xfd{"),
        ("model-number", _json({**ok, "model": 1})),
        ("model-empty", _json({**ok, "model": ""})),
        ("model-huge", _json({**ok, "model": "m" * 10_000})),
        ("model-unknown", _json({**ok, "model": "nope"})),
        ("messages-missing", _json({"model": "tiny"})),
        ("messages-string", _json({**ok, "messages": "hi"})),
        ("messages-empty", _json({**ok, "messages": []})),
        ("role-bogus", _json({**ok, "messages": [{"role": "wizard", "content": "hi"}]})),
        ("part-bogus", _json({**ok, "messages": [{"role": "user", "content": [{"type": "x"}]}]})),
        (
            "metadata-5000",
            b'{"model":"tiny","messages":[],"metadata":' + _deep(5000).encode() + b"}",
        ),
        ("brackets-100k", b"[" * 100_000),
        (
            "schema-500",
            _json(
                {
                    **ok,
                    "tools": [
                        {
                            "type": "function",
                            "function": {"name": "f", "parameters": json.loads(_deep(500))},
                        }
                    ],
                }
            ),
        ),
        (
            "tool-args-5000",
            _json(
                {
                    **ok,
                    "messages": [
                        *USER,
                        {
                            "role": "assistant",
                            "tool_calls": [
                                {
                                    "id": "c",
                                    "type": "function",
                                    "function": {"name": "f", "arguments": deep_args},
                                }
                            ],
                        },
                    ],
                }
            ),
        ),
        ("temperature-subnormal", _json({**ok, "temperature": 1.8e-39})),
        ("temperature-huge", b'{"model":"tiny","messages":[],"temperature":1e400}'),
        ("temperature-nan-string", _json({**ok, "temperature": "NaN"})),
        ("temperature-negative", _json({**ok, "temperature": -1})),
        ("top-p-zero", _json({**ok, "top_p": 0})),
        ("top-p-subnormal", _json({**ok, "top_p": 5e-324})),
        ("max-tokens-negative", _json({**ok, "max_tokens": -1})),
        ("max-tokens-bignum", b'{"model":"tiny","messages":[],"max_tokens":' + b"9" * 5000 + b"}"),
        ("n-9", _json({**ok, "n": 9})),
        ("stop-100", _json({**ok, "stop": ["x"] * 100})),
        ("stream-string", _json({**ok, "stream": "yes"})),
        ("tool-choice-bogus", _json({**ok, "tool_choice": "sometimes"})),
        ("top-logprobs-21", _json({**ok, "logprobs": True, "top_logprobs": 21})),
        ("top-logprobs-without-logprobs", _json({**ok, "top_logprobs": 2})),
        ("logit-bias-word-key", _json({**ok, "logit_bias": {"hello": 5}})),
        ("logit-bias-token-out-of-vocab", _json({**ok, "logit_bias": {"99999999": 5}})),
        ("logit-bias-200", _json({**ok, "logit_bias": {"1": 200}})),
        ("repetition-penalty-0", _json({**ok, "repetition_penalty": 0})),
        ("json-schema-missing", _json({**ok, "response_format": {"type": "json_schema"}})),
        (
            "json-schema-bogus-type",
            _json(
                {
                    **ok,
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                    },
                }
            ),
        ),
        ("chat-template-kwargs-list", _json({**ok, "chat_template_kwargs": [1]})),
        ("reasoning-effort-bogus", _json({**ok, "reasoning_effort": "extreme"})),
        ("frequency-penalty-9", _json({**ok, "frequency_penalty": 9})),
        (
            "image-non-vision",
            _json(
                {
                    **ok,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "image_url",
                                    "image_url": {"url": "data:image/png;base64,AAAA"},
                                }
                            ],
                        }
                    ],
                }
            ),
        ),
        ("prompt-too-long", _json({**ok, "messages": [{"role": "user", "content": LONG}]})),
    ]


def _messages_bodies() -> list[tuple[str, bytes]]:
    ok = {"model": "tiny", "max_tokens": 2, "messages": USER}
    tool_use = {"type": "tool_use", "id": "t", "name": "f", "input": json.loads(_deep(300))}
    return [
        ("empty", b""),
        ("array", b"[]"),
        ("truncated", b'{"model":'),
        ("not-utf8", b"\xc3\x28"),
        ("max-tokens-missing", _json({"model": "tiny", "messages": USER})),
        ("max-tokens-zero", _json({**ok, "max_tokens": 0})),
        ("model-unknown", _json({**ok, "model": "nope"})),
        ("role-system", _json({**ok, "messages": [{"role": "wizard", "content": "x"}]})),
        ("block-bogus", _json({**ok, "messages": [{"role": "user", "content": [{"type": "?"}]}]})),
        (
            "metadata-5000",
            b'{"model":"tiny","max_tokens":2,"messages":[],"metadata":'
            + _deep(5000).encode()
            + b"}",
        ),
        (
            "schema-500",
            _json({**ok, "tools": [{"name": "f", "input_schema": json.loads(_deep(500))}]}),
        ),
        (
            "tool-use-input-300",
            _json({**ok, "messages": [*USER, {"role": "assistant", "content": [tool_use]}]}),
        ),
        ("temperature-subnormal", _json({**ok, "temperature": 1.8e-39})),
        ("temperature-2", _json({**ok, "temperature": 2})),
        ("top-k-negative", _json({**ok, "top_k": -5})),
        ("stop-sequences-empty-string", _json({**ok, "stop_sequences": [""]})),
        ("tool-choice-bogus", _json({**ok, "tool_choice": {"type": "sometimes"}})),
        ("system-number", _json({**ok, "system": 5})),
        ("prompt-too-long", _json({**ok, "messages": [{"role": "user", "content": LONG}]})),
    ]


# The /v1/messages bodies that count_tokens must refuse too (it takes no max_tokens, sampling).
BAD_FOR_COUNT = {
    "empty",
    "array",
    "truncated",
    "not-utf8",
    "model-unknown",
    "role-system",
    "block-bogus",
    "schema-500",
    "tool-use-input-300",
    "tool-choice-bogus",
    "system-number",
}


def _ollama_cases() -> list[Case]:
    """Hostile input to Ollama's routes: 4xx with ``{"error": "..."}``."""
    ok = {"model": "tiny", "messages": USER, "stream": False, "options": {"num_predict": 2}}
    call = {"function": {"name": "f", "arguments": json.loads(_deep(300))}}
    chat = [
        ("empty", b""),
        ("null", b"null"),
        ("array", b"[]"),
        ("truncated", b'{"model": "tiny", "messages": ['),
        ("not-utf8", b"\xff\xfe\xfd{"),
        ("model-number", _json({**ok, "model": 1})),
        ("model-empty", _json({**ok, "model": ""})),
        ("model-unknown", _json({**ok, "model": "nope:latest"})),
        ("messages-string", _json({**ok, "messages": "hi"})),
        ("role-bogus", _json({**ok, "messages": [{"role": "wizard", "content": "hi"}]})),
        ("content-number", _json({**ok, "messages": [{"role": "user", "content": 5}]})),
        ("options-unknown", _json({**ok, "options": {"temprature": 1}})),
        ("options-string", _json({**ok, "options": "fast"})),
        ("temperature-huge", b'{"model":"tiny","messages":[],"options":{"temperature":1e400}}'),
        ("temperature-subnormal", _json({**ok, "options": {"temperature": 1.8e-39}})),
        ("top-p-2", _json({**ok, "options": {"top_p": 2}})),
        ("num-predict-0", _json({**ok, "options": {"num_predict": 0}})),
        ("num-predict-bignum", b'{"model":"tiny","options":{"num_predict":' + b"9" * 5000 + b"}}"),
        ("num-ctx-above-context", _json({**ok, "options": {"num_ctx": 100_000}})),
        ("mirostat-2", _json({**ok, "options": {"mirostat": 2}})),
        ("repeat-penalty", _json({**ok, "options": {"repeat_penalty": 1.3}})),
        ("stop-100", _json({**ok, "options": {"stop": ["x"] * 100, "num_predict": 2}})),
        ("format-xml", _json({**ok, "format": "xml"})),
        ("format-500", _json({**ok, "format": json.loads(_deep(500))})),
        ("format-5000", b'{"model":"tiny","messages":[],"format":' + _deep(5000).encode() + b"}"),
        ("keep-alive-bogus", _json({**ok, "keep_alive": "5 parsecs"})),
        ("keep-alive-list", _json({**ok, "keep_alive": [1]})),
        ("think-true", _json({**ok, "think": True})),
        ("logprobs", _json({**ok, "logprobs": True})),
        ("stream-string", _json({**ok, "stream": "yes"})),
        (
            "images-non-vision",
            _json({**ok, "messages": [{"role": "user", "content": "x", "images": ["iVBOR"]}]}),
        ),
        (
            "tool-args-300",
            _json({**ok, "messages": [*USER, {"role": "assistant", "tool_calls": [call]}]}),
        ),
        (
            "schema-500",
            _json(
                {
                    **ok,
                    "tools": [
                        {
                            "type": "function",
                            "function": {"name": "f", "parameters": json.loads(_deep(500))},
                        }
                    ],
                }
            ),
        ),
        ("prompt-too-long", _json({**ok, "messages": [{"role": "user", "content": LONG}]})),
    ]
    generate_ok = {"model": "tiny", "prompt": "hi", "stream": False}
    generate = [
        ("prompt-number", _json({**generate_ok, "prompt": 5})),
        ("raw", _json({**generate_ok, "raw": True})),
        ("template", _json({**generate_ok, "template": "{{ .Prompt }}"})),
        ("suffix", _json({**generate_ok, "suffix": "end"})),
        ("context", _json({**generate_ok, "context": [1, 2, 3]})),
        ("images-non-vision", _json({**generate_ok, "images": ["iVBOR"]})),
        ("width", _json({**generate_ok, "width": 512})),
        ("keep-alive-upstream-style", _json({**generate_ok, "keep_alive": "1x"})),
    ]
    auth = {**OPENAI_AUTH, **JSON}
    cases = [
        Case(f"gw-ollama-chat-{n}", "gateway", request("POST", "/api/chat", b, auth), "ollama")
        for n, b in chat
    ]
    cases += [
        Case(
            f"gw-ollama-generate-{n}",
            "gateway",
            request("POST", "/api/generate", b, auth),
            "ollama",
        )
        for n, b in generate
    ]
    embed_ok = {"model": "tiny", "input": "hi"}
    embed = [
        ("empty", b""),
        ("null", b"null"),
        ("not-utf8", b"\xff\xfe\xfd{"),
        ("input-number", _json({**embed_ok, "input": 5})),
        ("input-token-ids", _json({**embed_ok, "input": [1, 2]})),
        ("input-nested", _json({**embed_ok, "input": [["a"]]})),
        ("input-2049", _json({**embed_ok, "input": ["a"] * 2049})),
        ("dimensions-0", _json({**embed_ok, "dimensions": 0})),
        ("dimensions-huge", _json({**embed_ok, "dimensions": 10**9})),
        ("truncate-string", _json({**embed_ok, "truncate": "yes"})),
        ("keep-alive-bogus", _json({**embed_ok, "keep_alive": "5 parsecs"})),
        ("options-unknown", _json({**embed_ok, "options": {"temprature": 1}})),
        ("num-ctx-above-context", _json({**embed_ok, "options": {"num_ctx": 100_000}})),
        ("model-unknown", _json({**embed_ok, "model": "nope"})),
        ("chat-model", _json(embed_ok)),  # tiny has task = "generate"
        ("chat-model-load", _json({"model": "tiny"})),
        ("chat-model-unload", _json({"model": "tiny", "keep_alive": 0})),
    ]
    for path in ("/api/embed", "/api/embeddings"):
        cases += [
            Case(
                f"gw-ollama{path.removeprefix('/api')}-{n}",
                "gateway",
                request("POST", path, b, auth),
                "ollama",
            )
            for n, b in embed
        ]
    cases.append(
        Case(
            "gw-ollama/embeddings-prompt-number",
            "gateway",
            request("POST", "/api/embeddings", _json({"model": "tiny", "prompt": 5}), auth),
            "ollama",
        )
    )
    deep = _deep(5000).encode()
    cases += [
        Case(
            "gw-ollama-show-empty", "gateway", request("POST", "/api/show", b"{}", auth), "ollama"
        ),
        Case(
            "gw-ollama-show-unknown",
            "gateway",
            request("POST", "/api/show", b'{"model":"nope"}', auth),
            "ollama",
        ),
        Case("gw-ollama-show-deep", "gateway", request("POST", "/api/show", deep, auth), "ollama"),
        Case(
            "gw-ollama-embed-deep", "gateway", request("POST", "/api/embed", deep, auth), "ollama"
        ),
        Case(
            "gw-ollama-embed-no-model",
            "gateway",
            request("POST", "/api/embed", b'{"input":"x"}', auth),
            "ollama",
        ),
        Case(
            "gw-ollama-pull",
            "gateway",
            request("POST", "/api/pull", b'{"model":"llama3"}', auth),
            "ollama",
        ),
        Case(
            "gw-ollama-delete",
            "gateway",
            request("DELETE", "/api/delete", b'{"model":"tiny"}', auth),
            "ollama",
        ),
        Case("gw-ollama-no-route", "gateway", request("GET", "/api/nothing", b"", auth), "ollama"),
        Case("gw-ollama-no-key", "gateway", request("GET", "/api/tags", b""), "ollama"),
        Case(
            "gw-ollama-wrong-key",
            "gateway",
            request("POST", "/api/chat", _json(ok), {"Authorization": "Bearer nope"}),
            "ollama",
        ),
    ]
    return cases


def _gemini_cases() -> list[Case]:
    """Hostile input to Gemini's routes: 4xx in Google's ``{"error": {code, message, status}}``."""
    user = [{"role": "user", "parts": [{"text": "hi"}]}]
    ok = {"contents": user, "generationConfig": {"maxOutputTokens": 2}}
    declare = {"functionDeclarations": [{"name": "f", "parameters": json.loads(_deep(500))}]}
    call = {
        "role": "model",
        "parts": [{"functionCall": {"name": "f", "args": json.loads(_deep(300))}}],
    }
    image = {"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBOR"}}]}
    bodies = [
        ("empty", b""),
        ("null", b"null"),
        ("array", b"[]"),
        ("truncated", b'{"contents": ['),
        ("not-utf8", b"\xff\xfe\xfd{"),
        ("contents-missing", _json({})),
        ("contents-string", _json({"contents": "hi"})),
        ("contents-empty", _json({"contents": []})),
        ("role-bogus", _json({"contents": [{"role": "wizard", "parts": [{"text": "x"}]}]})),
        ("part-unknown-field", _json({"contents": [{"role": "user", "parts": [{"bogus": 1}]}]})),
        ("part-empty", _json({"contents": [{"role": "user", "parts": [{}]}]})),
        ("snake-and-camel", _json({**ok, "generation_config": {"temperature": 1}})),
        ("snake-unknown", _json({"contents": user, "generation_config": {"temprature": 1}})),
        ("config-unknown", _json({**ok, "generationConfig": {"temprature": 1}})),
        ("temperature-huge", b'{"contents":[],"generationConfig":{"temperature":1e400}}'),
        ("temperature-subnormal", _json({**ok, "generationConfig": {"temperature": 1.8e-39}})),
        ("candidate-count-2", _json({**ok, "generationConfig": {"candidateCount": 2}})),
        ("max-output-negative", _json({**ok, "generationConfig": {"maxOutputTokens": -1}})),
        ("stop-100", _json({**ok, "generationConfig": {"stopSequences": ["x"] * 100}})),
        ("mime-bogus", _json({**ok, "generationConfig": {"responseMimeType": "text/x-enum"}})),
        (
            "schema-without-mime",
            _json({**ok, "generationConfig": {"responseSchema": {"type": "OBJECT"}}}),
        ),
        (
            "schema-500",
            _json(
                {
                    **ok,
                    "generationConfig": {
                        "responseMimeType": "application/json",
                        "responseJsonSchema": json.loads(_deep(500)),
                    },
                }
            ),
        ),
        ("logprobs", _json({**ok, "generationConfig": {"responseLogprobs": True}})),
        ("modality-image", _json({**ok, "generationConfig": {"responseModalities": ["IMAGE"]}})),
        ("parameters-500", _json({**ok, "tools": [declare]})),
        ("tool-google-search", _json({**ok, "tools": [{"googleSearch": {}}]})),
        (
            "mode-bogus",
            _json({**ok, "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}}),
        ),
        (
            "allowed-unknown",
            _json(
                {
                    **ok,
                    "tools": [{"functionDeclarations": [{"name": "f"}]}],
                    "toolConfig": {
                        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["g"]}
                    },
                }
            ),
        ),
        ("call-args-300", _json({"contents": [*user, call]})),
        ("image-non-vision", _json({"contents": [image]})),
        (
            "file-data",
            _json({"contents": [{"role": "user", "parts": [{"fileData": {"fileUri": "gs://x"}}]}]}),
        ),
        ("cached-content", _json({**ok, "cachedContent": "cachedContents/1"})),
        ("deep-5000", _deep(5000).encode()),
        ("prompt-too-long", _json({"contents": [{"role": "user", "parts": [{"text": LONG}]}]})),
    ]
    key = {"x-goog-api-key": CLIENT_KEY, **JSON}
    base = "/v1beta/models/tiny"
    cases = [
        Case(
            f"gw-gemini-generate-{n}",
            "gateway",
            request("POST", base + ":generateContent", b, key),
            "gemini",
        )
        for n, b in bodies
    ]
    cases += [
        Case(
            f"gw-gemini-stream-{n}",
            "gateway",
            request("POST", base + ":streamGenerateContent?alt=sse", b, key),
            "gemini",
        )
        for n, b in bodies[:8]
    ]
    cases += [
        Case(
            f"gw-gemini-count-{n}",
            "gateway",
            request("POST", base + ":countTokens", b, key),
            "gemini",
        )
        for n, b in bodies[:10]
    ]
    text = {"parts": [{"text": "hi"}]}
    embed_one = [
        ("empty", b""),
        ("null", b"null"),
        ("content-missing", _json({})),
        ("content-string", _json({"content": "hi"})),
        ("generation-body", _json(ok)),
        ("task-type-bogus", _json({"content": text, "taskType": "SOMETHING"})),
        ("task-type-query", _json({"content": text, "taskType": "RETRIEVAL_QUERY"})),
        ("title", _json({"content": text, "title": "t"})),
        ("dimensions-0", _json({"content": text, "outputDimensionality": 0})),
        ("image", _json({"content": image})),
        ("model-other", _json({"content": text, "model": "models/nope"})),
        ("snake-and-camel", _json({"content": text, "task_type": "X", "taskType": "Y"})),
        ("chat-model", _json({"content": text})),  # tiny has task = "generate"
    ]
    one = {"content": text}
    embed_batch = [
        ("requests-missing", _json({})),
        ("requests-empty", _json({"requests": []})),
        ("requests-2049", _json({"requests": [one] * 2049})),
        ("requests-object", _json({"requests": one})),
        (
            "dimensions-differ",
            _json({"requests": [{**one, "outputDimensionality": 8}, one]}),
        ),
        ("model-other", _json({"requests": [{**one, "model": "models/nope"}]})),
        ("chat-model", _json({"requests": [one, one]})),
    ]
    for method, rows in ((":embedContent", embed_one), (":batchEmbedContents", embed_batch)):
        cases += [
            Case(
                f"gw-gemini{method}-{n}",
                "gateway",
                request("POST", base + method, b, key),
                "gemini",
            )
            for n, b in rows
        ]
    body = _json(ok)
    cases += [
        Case(
            "gw-gemini-method-unknown",
            "gateway",
            request("POST", base + ":predict", body, key),
            "gemini",
        ),
        Case("gw-gemini-no-method", "gateway", request("POST", base, body, key), "gemini"),
        Case(
            "gw-gemini-model-unknown",
            "gateway",
            request("POST", "/v1beta/models/nope:generateContent", body, key),
            "gemini",
        ),
        Case(
            "gw-gemini-get-unknown",
            "gateway",
            request("GET", "/v1beta/models/nope", b"", key),
            "gemini",
        ),
        Case(
            "gw-gemini-no-key",
            "gateway",
            request("POST", base + ":generateContent", body, JSON),
            "gemini",
        ),
        Case(
            "gw-gemini-query-key-wrong",
            "gateway",
            request("POST", base + ":generateContent?key=nope", body, JSON),
            "gemini",
        ),
        Case(
            "gw-gemini-goog-key-not-utf8",
            "gateway",
            request("GET", "/v1beta/models", b"", {"x-goog-api-key": b"\xc0\xaf"}),
            "gemini",
        ),
        Case(
            "gw-gemini-no-route", "gateway", request("GET", "/v1beta/nothing", b"", key), "gemini"
        ),
        Case(
            "gw-gemini-query-key-no-route",
            "gateway",
            request("GET", f"/v1beta/nothing?key={CLIENT_KEY}", b"", JSON),
            "gemini",
        ),
    ]
    return cases


def _load_bodies() -> list[tuple[str, bytes]]:
    ok = {"model": "x", "source": "tiny"}
    return [
        ("vram-1e308", _json({**ok, "vram_gb": 1e308})),
        ("vram-1e400", b'{"model":"x","source":"tiny","vram_gb":1e400}'),
        ("vram-negative", _json({**ok, "vram_gb": -1})),
        ("source-nul", _json({**ok, "source": "tiny\u0000x"})),
        ("source-4000", _json({**ok, "source": "a" * 4000})),
        ("source-deep-path", _json({**ok, "source": "a/" * 1900 + "b"})),
        ("source-loop", _json({**ok, "source": "loop-a"})),
        ("source-dotdot", _json({**ok, "source": "../../../../etc"})),
        ("source-absolute", _json({**ok, "source": "/etc"})),
        ("source-hub", _json({**ok, "source": "hf:org/name"})),
        ("model-bad-chars", _json({**ok, "model": "a b"})),
        ("quantization-bogus", _json({**ok, "quantization": "3bit"})),
        ("device-bogus", _json({**ok, "device": "cuda:9"})),
        ("conflict", _json({"model": "tiny", "source": "tiny", "quantization": "4bit"})),
        ("deep", _deep(5000).encode()),
    ]


def _cases() -> list[Case]:
    cases: list[Case] = []
    for name, body in _chat_bodies():
        headers = {**OPENAI_AUTH, **JSON}
        cases.append(
            Case(
                f"gw-chat-{name}",
                "gateway",
                request("POST", "/v1/chat/completions", body, headers),
                "openai",
            )
        )
        neuron_headers = {**NEURON_AUTH, **JSON}
        cases.append(
            Case(
                f"n-chat-{name}",
                "neuron",
                request("POST", "/v1/chat/completions", body, neuron_headers),
                "openai",
            )
        )
    for name, body in _messages_bodies():
        headers = {**ANTHROPIC_AUTH, **JSON}
        cases.append(
            Case(
                f"gw-messages-{name}",
                "gateway",
                request("POST", "/v1/messages", body, headers),
                "anthropic",
            )
        )
        if name in BAD_FOR_COUNT:
            cases.append(
                Case(
                    f"gw-count-{name}",
                    "gateway",
                    request("POST", "/v1/messages/count_tokens?beta=true", body, headers),
                    "anthropic",
                )
            )
    for name, body in _load_bodies():
        cases.append(
            Case(
                f"n-load-{name}",
                "neuron",
                request("POST", "/models/load", body, {**NEURON_AUTH, **JSON}),
                "openai",
            )
        )
    deep = _deep(5000).encode()
    cases += [
        Case(
            "n-unload-deep",
            "neuron",
            request("POST", "/models/unload", deep, NEURON_AUTH),
            "openai",
        ),
        Case(
            "n-unload-missing",
            "neuron",
            request("POST", "/models/unload", b'{"model":"nope"}', NEURON_AUTH),
            "openai",
        ),
        Case(
            "n-tokenize-deep",
            "neuron",
            request("POST", "/v1/tokenize", deep, NEURON_AUTH),
            "openai",
        ),
        Case(
            "n-tokenize-schema-500",
            "neuron",
            request(
                "POST",
                "/v1/tokenize",
                _json(
                    {
                        "model": "tiny",
                        "messages": USER,
                        "tools": [
                            {
                                "type": "function",
                                "function": {"name": "f", "parameters": json.loads(_deep(500))},
                            }
                        ],
                    }
                ),
                NEURON_AUTH,
            ),
            "openai",
        ),
        Case(
            "gw-admin-load-deep",
            "gateway",
            request(
                "POST", "/cortex/models/tiny/load", deep, {"Authorization": f"Bearer {ADMIN_KEY}"}
            ),
            "openai",
        ),
    ]
    cases += _header_cases() + _ollama_cases() + _gemini_cases()
    return cases


def _header_cases() -> list[Case]:
    chat = _json({"model": "tiny", "messages": USER, "max_tokens": 2})
    bad_utf8 = b"Bearer \xff\xfe" + CLIENT_KEY.encode()
    out: list[Case] = []
    for role, auth, path in (
        ("gateway", OPENAI_AUTH, "/v1/chat/completions"),
        ("neuron", NEURON_AUTH, "/v1/chat/completions"),
    ):
        out += [
            Case(
                f"{role}-auth-not-utf8",
                role,
                request("POST", path, chat, {"Authorization": bad_utf8}),
                "openai",
            ),
            Case(f"{role}-auth-missing", role, request("POST", path, chat), "openai"),
            Case(
                f"{role}-auth-latin1",
                role,
                request(
                    "GET", "/v1/models", b"", {"Authorization": "Bearer caf\xe9".encode("latin-1")}
                ),
                "openai",
            ),
            Case(
                f"{role}-gzip-lie",
                role,
                request("POST", path, chat, {**auth, "Content-Encoding": "gzip"}),
                "openai",
            ),
            Case(
                f"{role}-deflate-lie",
                role,
                request("POST", path, chat, {**auth, "Content-Encoding": "deflate"}),
                "openai",
            ),
            Case(
                f"{role}-gzip-truncated",
                role,
                request(
                    "POST", path, gzip.compress(chat)[:30], {**auth, "Content-Encoding": "gzip"}
                ),
                "openai",
            ),
            Case(
                f"{role}-gzip-of-garbage",
                role,
                request(
                    "POST", path, gzip.compress(b"\x00" * 64), {**auth, "Content-Encoding": "gzip"}
                ),
                "openai",
            ),
            Case(
                f"{role}-gzip-bomb",
                role,
                request(
                    "POST",
                    path,
                    gzip.compress(b" " * 40_000_000),
                    {**auth, "Content-Encoding": "gzip"},
                ),
                "openai",
            ),
            Case(
                f"{role}-request-id-not-utf8",
                role,
                request("POST", path, b"{", {**auth, "x-request-id": b"\xff\r"[:1] + b"abc"}),
                "openai",
            ),
            Case(f"{role}-no-route", role, request("GET", "/nope", b"", auth), "openai"),
            Case(f"{role}-wrong-method", role, request("DELETE", path, b"", auth), "openai"),
            Case(
                f"{role}-chunked-broken",
                role,
                request(
                    "POST", path, b"zz\r\n{}\r\n0\r\n\r\n", {**auth, "Transfer-Encoding": "chunked"}
                ),
                None,
            ),
            Case(
                f"{role}-header-too-long",
                role,
                request("GET", "/v1/models", b"", {**auth, "X-Long": "a" * 9000}),
                None,
            ),
            Case(
                f"{role}-header-line-with-key",
                role,
                request(
                    "GET",
                    "/v1/models",
                    b"",
                    {
                        "Authorization": b"Bearer "
                        + CLIENT_KEY.encode()
                        + b"\x01"
                        + NEURON_TOKEN.encode()
                    },
                ),
                None,
            ),
            Case(
                f"{role}-header-no-colon",
                role,
                request("GET", "/v1/models", b"", {**auth}).replace(
                    b"Connection: close", b"Connection: close\r\nBearer-" + ADMIN_KEY.encode()
                ),
                None,
            ),
        ]
    out += [
        Case(
            "gw-model-nope-anthropic",
            "gateway",
            request("GET", "/v1/models/nope", b"", ANTHROPIC_AUTH),
            "anthropic",
        ),
        Case(
            "gw-model-nope-openai",
            "gateway",
            request("GET", "/v1/models/nope", b"", OPENAI_AUTH),
            "openai",
        ),
        Case(
            "gw-models-no-key-anthropic",
            "gateway",
            request("GET", "/v1/models", b"", {"anthropic-version": "2023-06-01"}),
            "anthropic",
        ),
        Case(
            "gw-messages-no-key",
            "gateway",
            request("POST", "/v1/messages", chat, {"anthropic-version": "2023-06-01"}),
            "anthropic",
        ),
        Case(
            "gw-messages-bearer-not-utf8",
            "gateway",
            request("POST", "/v1/messages", chat, {"Authorization": bad_utf8}),
            "anthropic",
        ),
        Case(
            "gw-x-api-key-not-utf8",
            "gateway",
            request(
                "POST",
                "/v1/messages",
                chat,
                {"x-api-key": b"\xc0\xaf", "anthropic-version": "2023-06-01"},
            ),
            "anthropic",
        ),
        Case("gw-admin-no-key", "gateway", request("GET", "/cortex/status", b""), "openai"),
        Case(
            "gw-admin-client-key",
            "gateway",
            request("GET", "/cortex/status", b"", OPENAI_AUTH),
            "openai",
        ),
        Case(
            "gw-body-too-large",
            "gateway",
            request("POST", "/v1/chat/completions", b"[" + b" " * 1_100_000 + b"]", OPENAI_AUTH),
            "openai",
        ),
        Case(
            "gw-body-too-large-anthropic",
            "gateway",
            request("POST", "/v1/messages", b" " * 1_100_000, ANTHROPIC_AUTH),
            "anthropic",
        ),
    ]
    return out


CASES = _cases()


def _dialect_of(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and set(data) == {"error"} and isinstance(data["error"], str):
        return "ollama"
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return None
    error = data["error"]
    if set(error) == {"code", "message", "status"}:
        return "gemini"
    if data.get("type") == "error" and {"type", "message"} <= set(error):
        return "anthropic"
    if {"message", "type"} <= set(error) and "type" not in data:
        return "openai"
    return None


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 100
    assert len({c.name for c in CASES}) == len(CASES)


def test_hostile_requests_get_4xx_in_their_dialect(
    gateway: GatewayProcess, neuron: NeuronProcess
) -> None:
    urls = {"gateway": gateway.url, "neuron": neuron.url}
    wrong = []
    for case in CASES:
        status, _, body = send(urls[case.role], case.data)
        dialect = _dialect_of(body)
        if not 400 <= status < 500 or (case.dialect and dialect != case.dialect):
            wrong.append(f"{case.name}: {status} {dialect} {body[:200]!r}")
    assert not wrong, "\n".join(wrong)
    for url in urls.values():
        assert send(url, request("GET", "/health"))[0] == 200
    ok = _json({"model": "tiny", "messages": USER, "max_tokens": 2})
    status, _, body = send(gateway.url, request("POST", "/v1/chat/completions", ok, OPENAI_AUTH))
    assert status == 200, body
    assert "Traceback" not in gateway.log_text() + neuron.log_text()


async def _hang_up(url: str, headers: dict[str, str], path: str, body: dict[str, Any]) -> None:
    """Start a stream, read its first bytes, and drop the connection."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, json=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        await resp.content.readany()


def test_logs_hold_no_key_and_hang_ups_are_one_info_line(
    gateway: GatewayProcess, neuron: NeuronProcess
) -> None:
    for url in (gateway.url, neuron.url):
        for case in _header_cases():
            if "key" in case.name:
                send(url, case.data)
    for case in _ollama_cases() + _gemini_cases():
        if "key" in case.name:
            send(gateway.url, case.data)
    stream = {"model": "tiny", "messages": USER, "max_tokens": 2000, "stream": True}
    anthropic = {"model": "tiny", "messages": USER, "max_tokens": 2000, "stream": True}

    async def hang_ups() -> None:
        await _hang_up(
            gateway.url, {"Authorization": f"Bearer {CLIENT_KEY}"}, "/v1/chat/completions", stream
        )
        await _hang_up(
            gateway.url,
            {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"},
            "/v1/messages",
            anthropic,
        )
        await _hang_up(
            neuron.url, {"Authorization": f"Bearer {NEURON_TOKEN}"}, "/v1/chat/completions", stream
        )

    asyncio.run(hang_ups())
    neuron.wait_for(lambda s: s["models"][0]["in_flight"] == 0)
    logs = {"gateway": gateway.log_text(), "neuron": neuron.log_text()}
    for role, text in logs.items():
        for secret in SECRETS:
            assert secret not in text, f"{role} log holds a key"
        assert "Traceback" not in text and " ERROR " not in text, text[-3000:]
    assert "client hung up" in logs["neuron"]
    assert "malformed request" in logs["gateway"] and "malformed request" in logs["neuron"]


# --------------------------------------------------------------------------- saturation


async def _stream(session: aiohttp.ClientSession, url: str, seed: int) -> dict[str, Any]:
    """One sampled stream of 400 tokens."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Tell me about the weather"}],
        "max_tokens": 400,
        "seed": seed,
        "stream": True,
    }
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
        if resp.status != 200:
            return {"status": resp.status, "headers": resp.headers, "body": await resp.json()}
        first_content, raw = None, b""
        async for chunk in resp.content.iter_any():
            if first_content is None and b'"content":"' in chunk and b'"content":""' not in chunk:
                first_content = time.monotonic() - started
            raw += chunk
        return {"status": 200, "first_content_s": first_content, "raw": raw}


async def _saturate(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        return await asyncio.gather(*(_stream(session, url, seed) for seed in LONG_SEEDS))


def test_past_the_queue_bound_429_and_queued_streams_do_not_make_the_node_suspect(
    gateway: GatewayProcess,
) -> None:
    results = asyncio.run(_saturate(gateway.url))
    refused = [r for r in results if r["status"] == 429]
    served = [r for r in results if r["status"] == 200]
    assert len(refused) + len(served) == len(LONG_SEEDS)
    assert len(refused) >= len(LONG_SEEDS) - 3  # one running, two queued; the rest refused at once
    for r in refused:
        assert r["headers"]["Retry-After"] == "1"
        assert r["body"]["error"]["type"] == "rate_limit_error"
    for r in served:
        assert r["raw"].endswith(b"data: [DONE]\n\n") and b'"error"' not in r["raw"]
    # The last admitted stream waited longer than the gateway tolerates silence.
    waits = [r["first_content_s"] for r in served]
    assert max(waits) > IDLE_S, waits
    admin = request("GET", "/cortex/status", b"", {"Authorization": f"Bearer {ADMIN_KEY}"})
    status = json.loads(send(gateway.url, admin)[2])
    assert [n["state"] for n in status["neurons"]] == ["up"]
    assert "suspect" not in gateway.log_text()
