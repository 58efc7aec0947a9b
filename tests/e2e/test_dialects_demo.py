"""Ollama's and Gemini's front doors on real transformers models, with their official clients
(``ollama``, ``google-genai``): embeddings from the tiny demo encoder (``task = "embed"``) and
JSON answers from the tiny demo chat model under ``format`` / ``responseSchema``. A
random-weight model says anything, so a reply that parses and validates was made to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess
from tests.e2e.test_constrained_demo import SCHEMA

demo = pytest.importorskip("cortex_transformers.demo")
ollama = pytest.importorskip("ollama")
genai = pytest.importorskip("google.genai")
types = pytest.importorskip("google.genai.types")
errors = pytest.importorskip("google.genai.errors")

pytestmark = pytest.mark.slow

KEY = "dialects-key"
TEXTS = ["first", "a second and somewhat longer text"]
LONG = "word " * 600  # more tokens than the encoder's 512
GOOGLE_SCHEMA: dict[str, Any] = {  # SCHEMA in Google's OpenAPI subset (types in capitals)
    "type": "OBJECT",
    "properties": {
        "name": {"type": "STRING", "maxLength": 10},
        "count": {"type": "INTEGER", "minimum": 0, "maximum": 9},
        "ok": {"type": "BOOLEAN"},
    },
    "required": ["name", "count", "ok"],
}


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Any, model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    encoders = tmp_path_factory.mktemp("encoders")
    demo.write_demo_embedding_model(encoders / "embed", seed=0)
    neuron: NeuronProcess = start_neuron(name="n", model_roots=[model_root, encoders])
    models = [
        {"id": "embed", "source": "embed", "task": "embed", "aliases": ["nomic-embed-*"]},
        {"id": "tiny", "source": "tiny", "context_length": 4096},
    ]
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-dialects-demo"),
        neurons={"n": neuron},
        models=models,
        api_keys=[KEY],
    )
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway: GatewayProcess) -> Any:
    return ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {KEY}"})


@pytest.fixture
def google(gateway: GatewayProcess) -> Any:
    options = types.HttpOptions(base_url=gateway.url, api_version="v1beta")
    return genai.Client(api_key=KEY, http_options=options)


def _openai_vectors(gateway: GatewayProcess, inputs: list[str]) -> tuple[list[Any], int]:
    """The same inputs through /v1/embeddings: (vectors, prompt tokens)."""
    import urllib.request

    body = json.dumps({"model": "embed", "input": inputs}).encode()
    request = urllib.request.Request(gateway.url + "/v1/embeddings", data=body, method="POST")
    request.add_header("Authorization", f"Bearer {KEY}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as resp:
        answer = json.loads(resp.read())
    return [d["embedding"] for d in answer["data"]], answer["usage"]["prompt_tokens"]


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


# --------------------------------------------------------------------------- Ollama embed


def test_ollama_embed_equals_openai_embeddings(client: Any, gateway: GatewayProcess) -> None:
    reply = client.embed(model="nomic-embed-text:latest", input=TEXTS)
    expected, tokens = _openai_vectors(gateway, TEXTS)
    assert reply.model == "nomic-embed-text:latest" and len(reply.embeddings) == 2
    assert all(_close(got, want) for got, want in zip(reply.embeddings, expected, strict=True))
    assert reply.prompt_eval_count == tokens and reply.total_duration > 0
    (one,) = client.embed(model="embed", input=TEXTS[0]).embeddings
    assert _close(one, expected[0])
    legacy = client.embeddings(model="embed", prompt=TEXTS[0])
    assert _close(list(legacy.embedding), expected[0])


def test_ollama_embed_truncates_by_default_and_refuses_when_told_not_to(client: Any) -> None:
    cut = client.embed(model="embed", input=LONG)
    assert len(cut.embeddings[0]) == demo.EMBED_HIDDEN and cut.prompt_eval_count == 512
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="embed", input=LONG, truncate=False)
    assert refused.value.status_code == 400 and "512" in refused.value.error


def test_ollama_embed_dimensions(client: Any) -> None:
    (short,) = client.embed(model="embed", input="hi", dimensions=16).embeddings
    assert len(short) == 16 and abs(sum(v * v for v in short) - 1.0) < 1e-5
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="embed", input="hi", dimensions=20)
    assert refused.value.status_code == 400 and "dimensions" in refused.value.error


def test_ollama_embed_on_a_chat_model_is_400_naming_its_task(client: Any) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model="tiny", input="hi")
    assert refused.value.status_code == 400 and 'task = "generate"' in refused.value.error


def test_ollama_embed_without_input_loads_and_with_keep_alive_0_unloads(
    client: Any, gateway: GatewayProcess
) -> None:
    assert client.embed(model="embed", input=[]).embeddings == []
    gateway.wait_for(lambda p: p.get("embed") == ["n"], timeout=60)
    assert client.embed(model="embed", input="", keep_alive=0).embeddings == []
    gateway.wait_for(lambda p: not p.get("embed"), timeout=60)


# --------------------------------------------------------------------------- Gemini embed


def test_gemini_embed_content_and_batch(google: Any, gateway: GatewayProcess) -> None:
    expected, _ = _openai_vectors(gateway, TEXTS)
    batch = google.models.embed_content(model="embed", contents=TEXTS)
    assert [len(e.values) for e in batch.embeddings] == [demo.EMBED_HIDDEN] * 2
    assert all(_close(e.values, w) for e, w in zip(batch.embeddings, expected, strict=True))
    short = google.models.embed_content(
        model="embed", contents="hi", config=types.EmbedContentConfig(output_dimensionality=16)
    )
    assert len(short.embeddings[0].values) == 16
    status, one = gateway.call(
        "POST",
        f"/v1beta/models/embed:embedContent?key={KEY}",
        {"content": {"parts": [{"text": TEXTS[0]}]}},
    )
    assert status == 200 and _close(one["embedding"]["values"], expected[0])


def test_gemini_embed_refusals_are_google_shaped(google: Any) -> None:
    with pytest.raises(errors.ClientError) as task_type:
        google.models.embed_content(
            model="embed", contents="hi", config=types.EmbedContentConfig(task_type="CLUSTERING")
        )
    assert task_type.value.code == 400 and "taskType" in task_type.value.message
    with pytest.raises(errors.ClientError) as chat_model:
        google.models.embed_content(model="tiny", contents="hi")
    assert chat_model.value.code == 400 and 'task = "generate"' in chat_model.value.message


# --------------------------------------------------------------------------- JSON answers


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_format_schema_answers_validate(client: Any, stream: bool) -> None:
    for seed in range(2):
        asked = {
            "model": "tiny",
            "messages": [{"role": "user", "content": f"a record {seed}"}],
            "format": SCHEMA,
            "options": {"num_predict": 120, "seed": seed, "temperature": 1},
        }
        if stream:
            text = "".join(p.message.content or "" for p in client.chat(stream=True, **asked))
        else:
            text = client.chat(stream=False, **asked).message.content
        jsonschema.validate(json.loads(text), SCHEMA)


def test_ollama_format_json_answers_are_objects(client: Any) -> None:
    for seed in range(3):
        reply = client.generate(
            model="tiny",
            prompt=f"any object {seed}",
            format="json",
            options={"num_predict": 400, "seed": seed},
        )
        if reply.done_reason == "stop":  # an object can be longer than the cap
            assert isinstance(json.loads(reply.response), dict)


@pytest.mark.parametrize(
    "field", [{"response_schema": GOOGLE_SCHEMA}, {"response_json_schema": SCHEMA}]
)
def test_gemini_response_schema_answers_validate(google: Any, field: dict[str, Any]) -> None:
    for seed in range(2):
        config = types.GenerateContentConfig(
            response_mime_type="application/json", max_output_tokens=120, seed=seed, **field
        )
        reply = google.models.generate_content(
            model="tiny", contents=f"a record {seed}", config=config
        )
        jsonschema.validate(json.loads(reply.text), SCHEMA)
