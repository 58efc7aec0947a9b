"""/v1/completions (with and without fill-in-the-middle) and /v1/embeddings through a real
gateway and neuron, driven by the official openai SDK.

Models: ``fim`` (the tiny demo model with FIM tokens), ``tiny`` (without), ``embed`` (the tiny
BERT-style demo encoder, ``task = "embed"``). All load on demand through the gateway.
"""

from __future__ import annotations

import base64
import struct
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess
from tests.prometheus_samples import samples, total

demo = pytest.importorskip("cortex_transformers.demo")

PREFIX = "def add(first, second):\n    total = first + second\n"
SUFFIX = "\n    return total\n"


@pytest.fixture(scope="module")
def root(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's model root (``tiny``) plus ``fim`` and ``embed`` next to it."""
    demo.write_demo_model(model_root / "fim", seed=0, fim=True)
    demo.write_demo_embedding_model(model_root / "embed", seed=0)
    return model_root


@pytest.fixture(scope="module")
def stack(
    root: Path, start_neuron: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, NeuronProcess]]:
    neuron: NeuronProcess = start_neuron(name="n1", model_roots=[str(root)])
    models = [
        {"id": "fim", "source": "fim", "context_length": 1024, "aliases": ["coder-*"]},
        {"id": "tiny", "source": "tiny", "context_length": 1024, "max_output_tokens": 100},
        {"id": "embed", "source": "embed", "task": "embed", "aliases": ["text-embedding-*"]},
    ]
    gw = GatewayProcess.start(tmp_path_factory.mktemp("gw"), neurons={"n1": neuron}, models=models)
    yield gw, neuron
    gw.stop()


@pytest.fixture
def oai(stack: tuple[GatewayProcess, NeuronProcess]) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack[0].url + "/v1", api_key="unused", max_retries=0)


def _fim_ids(root: Path, prefix: str, suffix: str) -> list[int]:
    from cortex_transformers import fim
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(root / "fim"))
    tokens = fim.find(tokenizer)
    assert tokens is not None
    return fim.encode(tokenizer, tokens, prefix, suffix)


def test_fill_in_the_middle_non_stream(oai: openai.OpenAI, root: Path) -> None:
    done = oai.completions.create(
        model="coder-fast", prompt=PREFIX, suffix=SUFFIX, max_tokens=8, temperature=0
    )
    assert done.object == "text_completion" and done.model == "fim"  # the id, not the alias
    assert done.choices[0].finish_reason in ("stop", "length")
    assert done.usage is not None
    # The neuron built the prompt from the FIM tokens: prefix, suffix and three markers.
    assert done.usage.prompt_tokens == len(_fim_ids(root, PREFIX, SUFFIX))
    again = oai.completions.create(
        model="fim", prompt=PREFIX, suffix=SUFFIX, max_tokens=8, temperature=0
    )
    assert again.choices[0].text == done.choices[0].text  # greedy: the same infill


def test_fill_in_the_middle_stream_equals_non_stream(oai: openai.OpenAI) -> None:
    asked: dict[str, Any] = {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 12}
    whole = oai.completions.create(model="fim", temperature=0, **asked)
    chunks = list(
        oai.completions.create(
            model="fim",
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            **asked,
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) <= {None}
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    unasked = list(oai.completions.create(model="fim", temperature=0, stream=True, **asked))
    assert all(c.choices for c in unasked)  # no usage-only chunk unless asked for


def test_a_resent_prompt_hits_the_prefix_cache(oai: openai.OpenAI) -> None:
    prompt = PREFIX * 20
    oai.completions.create(model="tiny", prompt=prompt, max_tokens=1)
    again = oai.completions.create(model="tiny", prompt=prompt + "# edit\n", max_tokens=1)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens >= 64


def test_echo_token_prompts_and_stop(oai: openai.OpenAI) -> None:
    echoed = oai.completions.create(model="tiny", prompt="Hello there", echo=True, max_tokens=3)
    assert echoed.choices[0].text.startswith("Hello there")
    by_ids = oai.completions.create(model="tiny", prompt=[5, 6, 7, 8], max_tokens=2)
    assert by_ids.usage is not None and by_ids.usage.prompt_tokens == 4
    stopped = oai.completions.create(
        model="tiny", prompt="Hello", max_tokens=40, stop=["a", "e", "i", "o", "u"], seed=1
    )
    assert not set(stopped.choices[0].text) & set("aeiou")


def test_logprobs_in_the_legacy_shape_stream_and_non_stream(oai: openai.OpenAI) -> None:
    asked: Any = {"model": "tiny", "prompt": "Hello", "max_tokens": 6, "temperature": 0}
    asked |= {"logprobs": 2, "echo": True, "extra_body": {"ignore_eos": True}}
    whole = oai.completions.create(**asked)
    (choice,) = whole.choices
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens is not None
    assert len(logprobs.tokens) == 6
    assert choice.text == "Hello" + "".join(logprobs.tokens)
    assert logprobs.text_offset is not None and logprobs.text_offset[0] == len("Hello")
    assert logprobs.top_logprobs is not None
    for token, logprob, top in zip(
        logprobs.tokens, logprobs.token_logprobs or [], logprobs.top_logprobs, strict=True
    ):
        assert logprob <= 0 and token in top and len(top) <= 3  # the chosen one and 2 more
        assert max(top.values()) == logprob  # greedy: the most likely
    streamed = [
        token
        for chunk in oai.completions.create(**asked, stream=True)
        for c in chunk.choices
        if c.logprobs is not None
        for token in c.logprobs.tokens or []
    ]
    assert streamed == logprobs.tokens


def test_penalties_and_logit_bias_reach_the_sampler(oai: openai.OpenAI) -> None:
    plain: Any = {"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0}
    plain |= {"logprobs": 0, "extra_body": {"ignore_eos": True}}
    first = oai.completions.create(**plain).choices[0].logprobs
    assert first is not None and first.tokens is not None
    forced_id = 40  # a byte token of the demo tokenizer
    forced = oai.completions.create(**plain, logit_bias={str(forced_id): 100})
    tokens = forced.choices[0].logprobs.tokens  # type: ignore[union-attr]
    assert tokens is not None and len(set(tokens)) == 1
    # A strong frequency penalty forbids repeating a token the forced reply is made of.
    mixed = oai.completions.create(
        **plain, logit_bias={str(forced_id): 5}, frequency_penalty=2.0, presence_penalty=2.0
    )
    assert len(set(mixed.choices[0].logprobs.tokens or [])) > 1  # type: ignore[union-attr]


def test_suffix_without_fim_tokens_is_400_naming_suffix(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai.completions.create(model="tiny", prompt=PREFIX, suffix=SUFFIX)
    assert refused.value.body["param"] == "suffix"  # type: ignore[index]


def _unpack(vector: str) -> list[float]:
    raw = base64.b64decode(vector)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_embeddings_batch_equals_one_by_one(oai: openai.OpenAI) -> None:
    texts = ["short", "a somewhat longer sentence about nothing at all", "x" * 300, "mid length"]
    batch = oai.embeddings.create(model="text-embedding-3-small", input=texts)
    assert [d.index for d in batch.data] == [0, 1, 2, 3]
    assert batch.usage.prompt_tokens > len(texts)
    for text, got in zip(texts, batch.data, strict=True):
        one = oai.embeddings.create(model="embed", input=text, encoding_format="float")
        alone = one.data[0].embedding
        assert len(alone) == len(got.embedding) == demo.EMBED_HIDDEN
        assert max(abs(a - b) for a, b in zip(alone, got.embedding, strict=True)) < 1e-5
        assert abs(sum(v * v for v in alone) - 1.0) < 1e-5  # normalised (modules.json)


def test_embedding_formats_dimensions_and_token_inputs(
    oai: openai.OpenAI, stack: tuple[GatewayProcess, NeuronProcess]
) -> None:
    gw = stack[0]
    status, floats = gw.call("POST", "/v1/embeddings", {"model": "embed", "input": "hi"})
    status64, b64 = gw.call(
        "POST", "/v1/embeddings", {"model": "embed", "input": "hi", "encoding_format": "base64"}
    )
    assert status == status64 == 200
    assert _unpack(b64["data"][0]["embedding"]) == pytest.approx(
        floats["data"][0]["embedding"], abs=1e-6
    )
    short = oai.embeddings.create(model="embed", input="hi", dimensions=32, encoding_format="float")
    vector = short.data[0].embedding
    assert len(vector) == 32 and abs(sum(v * v for v in vector) - 1.0) < 1e-5
    with pytest.raises(openai.BadRequestError) as refused:
        oai.embeddings.create(model="embed", input="hi", dimensions=20)
    assert refused.value.body["param"] == "dimensions"  # type: ignore[index]
    ids = oai.embeddings.create(model="embed", input=[[5, 6, 7], [8, 9]], encoding_format="float")
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 5


def test_truncate_cuts_a_long_input_to_the_context_at_gateway_and_neuron(
    stack: tuple[GatewayProcess, NeuronProcess],
) -> None:
    gw, neuron = stack
    body = {"model": "embed", "input": ["word " * 600, "hi"], "truncate": True}
    for status, answer in (
        gw.call("POST", "/v1/embeddings", body),
        neuron.api("POST", "/v1/embeddings", body),
    ):
        assert status == 200, answer
        assert len(answer["data"]) == 2 and answer["usage"]["prompt_tokens"] > 512


def test_a_model_asked_for_the_other_task_is_400_naming_it(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as chat:
        oai.chat.completions.create(model="embed", messages=[{"role": "user", "content": "hi"}])
    assert 'task = "embed"' in chat.value.message
    with pytest.raises(openai.BadRequestError) as text:
        oai.completions.create(model="embed", prompt="hi")
    assert 'task = "embed"' in text.value.message
    with pytest.raises(openai.BadRequestError) as vectors:
        oai.embeddings.create(model="tiny", input="hi")
    assert 'task = "generate"' in vectors.value.message


BAD = [
    ("/v1/completions", {"model": "tiny", "prompt": ["a", "b"]}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "n": 2}, "n"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "best_of": 3}, "best_of"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "logit_bias": {"999999": 1}}, None),
    ("/v1/completions", {"model": "fim", "prompt": "a", "suffix": "b", "echo": True}, "echo"),
    ("/v1/completions", {"model": "fim", "prompt": [1, 2], "suffix": "b"}, "suffix"),
    ("/v1/completions", {"model": "tiny", "prompt": [999999]}, None),
    ("/v1/completions", {"model": "tiny", "prompt": [[]]}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "a " * 1500}, "prompt"),
    ("/v1/completions", {"model": "tiny"}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 0}, "max_tokens"),
    ("/v1/embeddings", {"model": "embed", "input": []}, "input"),
    ("/v1/embeddings", {"model": "embed", "input": [[]]}, "input"),
    ("/v1/embeddings", {"model": "embed", "input": [1, "a"]}, "input"),
    ("/v1/embeddings", {"model": "embed", "input": "a", "encoding_format": "hex"}, None),
    ("/v1/embeddings", {"model": "embed", "input": [[10**6]]}, None),
    ("/v1/embeddings", {"model": "embed", "input": "word " * 600}, "input"),
    ("/v1/embeddings", {"model": "nope", "input": "a"}, None),
    ("/v1/embeddings", {"model": "embed", "input": "a", "truncate": "yes"}, "truncate"),
]


@pytest.mark.parametrize(("path", "body", "param"), BAD)
def test_bad_input_is_4xx_in_the_openai_dialect_at_gateway_and_neuron(
    stack: tuple[GatewayProcess, NeuronProcess], path: str, body: dict[str, Any], param: str | None
) -> None:
    gw, neuron = stack
    for status, answer in (gw.call("POST", path, body), neuron.api("POST", path, body)):
        assert 400 <= status < 500, answer
        assert set(answer) == {"error"} and answer["error"]["message"]
        if param is not None:
            assert answer["error"]["param"] == param


def test_models_carry_the_context_window_where_clients_read_it(
    stack: tuple[GatewayProcess, NeuronProcess],
) -> None:
    gw, neuron = stack
    _, listing = gw.call("GET", "/v1/models")
    cards = {card["id"]: card for card in listing["data"]}
    tiny = cards["tiny"]
    assert tiny["max_model_len"] == tiny["context_length"] == tiny["max_context_length"] == 1024
    assert tiny["max_output_tokens"] == 100  # its entry's max_output_tokens
    assert tiny["top_provider"] == {"context_length": 1024, "max_completion_tokens": 100}
    _, fim = gw.call("GET", "/v1/models/coder-x")  # by alias
    assert fim["max_model_len"] == 1024 and fim["max_output_tokens"] == 256  # a quarter
    # The neuron's own listing has resident models only: load fim here, not by test order
    assert gw.call("POST", "/cortex/models/fim/load")[0] == 200
    _, resident = neuron.api("GET", "/v1/models")
    assert {c["id"]: c["max_model_len"] for c in resident["data"]}["fim"] == 1024


def test_gateway_metrics_count_the_new_routes(
    oai: openai.OpenAI, stack: tuple[GatewayProcess, NeuronProcess]
) -> None:
    oai.completions.create(model="tiny", prompt="Hi", max_tokens=2)
    oai.embeddings.create(model="embed", input=["a", "b"])
    with urllib.request.urlopen(stack[0].metrics_url + "/metrics", timeout=10) as resp:
        found = samples(resp.read())
    for route in ("/v1/completions", "/v1/embeddings"):
        assert total(found, "cortex_requests_total", route=route, status="200") >= 1, route
    assert total(found, "cortex_tokens_total", kind="prompt") > 0
