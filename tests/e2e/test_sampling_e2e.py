"""Sampling controls seen by clients (issue 21): a gateway and a neuron on the tiny demo model.

``n`` choices share one prefill through the prefix cache (the neuron's
``cortex_prefix_cache_tokens_total`` shows choices 1..n-1 reading the prompt from it). A model's
generation_config.json and its models.toml ``[models.sampling]`` fill the fields a request omits,
and ``/v1/models`` and ``cortex status`` show the result.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess
from tests.e2e.test_metrics_e2e import _scrape
from tests.prometheus_samples import total

MODEL = {"id": "tiny", "source": "tiny", "context_length": 2048, "vram_gb": 0.5}
# The demo model with its own sampling defaults, and models.toml values over some of them.
TUNED = {
    "id": "tuned",
    "source": "tuned",
    "context_length": 2048,
    "vram_gb": 0.5,
    "sampling": {"temperature": 0.0, "top_p": 0.5},
}
OWN_DEFAULTS = {"temperature": 0.7, "top_k": 7}
BLOCK = 16  # the transformers harness's KV block size: only full blocks are shared


@pytest.fixture(scope="module")
def fleet(
    start_neuron: Callable[..., NeuronProcess],
    model_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, NeuronProcess]]:
    tuned_root = tmp_path_factory.mktemp("tuned")
    shutil.copytree(model_root / "tiny", tuned_root / "tuned")
    config_file = tuned_root / "tuned" / "generation_config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | OWN_DEFAULTS))
    neuron = start_neuron(name="n1", model_roots=[model_root, tuned_root], cpu_memory_budget_gb=1.0)
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw"), neurons={"n1": neuron}, models=[MODEL, TUNED]
    )
    yield gw, neuron
    gw.stop()


@pytest.fixture
def client(fleet: tuple[GatewayProcess, NeuronProcess]) -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet[0].url + "/v1", api_key="unused", max_retries=0)


def _cache(neuron: NeuronProcess) -> tuple[float, float]:
    found = _scrape(neuron.url, neuron.token)
    hit = total(found, "cortex_prefix_cache_tokens_total", model="tiny", result="hit")
    return hit, total(found, "cortex_prefix_cache_tokens_total", model="tiny", result="miss")


def test_n_choices_come_back_from_one_shared_prefill(
    fleet: tuple[GatewayProcess, NeuronProcess], client: openai.OpenAI
) -> None:
    neuron = fleet[1]
    hits, misses = _cache(neuron)
    reply = client.chat.completions.create(
        model="tiny",
        messages=[
            {"role": "system", "content": "Choices share this prompt's KV blocks. " * 6},
            {"role": "user", "content": "Write four different poems."},
        ],
        n=4,
        max_tokens=5,
        seed=3,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.usage is not None and reply.usage.completion_tokens == 4 * 5
    prompt = reply.usage.prompt_tokens
    assert prompt > 4 * BLOCK
    now_hits, now_misses = _cache(neuron)
    # Four sequences read the prompt: the first computes it, the other three find all of its
    # full blocks cached (each recomputes at most its last, partial block).
    assert now_hits - hits >= 3 * (prompt - BLOCK)
    assert now_misses - misses <= prompt + 3 * BLOCK


def test_streamed_choices_arrive_with_their_index_and_usage_counts_them_all(
    client: openai.OpenAI,
) -> None:
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Count to three."}],
        n=3,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    finished: dict[int, str] = {}
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
        usage = chunk.usage or usage
    assert finished == {0: "length", 1: "length", 2: "length"}
    assert usage is not None and usage.completion_tokens == 3 * 4


def _sampling_card(gw: GatewayProcess, model: str) -> Any:
    code, listing = gw.call("GET", "/v1/models")
    assert code == 200
    return next(card["cortex"]["sampling"] for card in listing["data"] if card["id"] == model)


def test_defaults_come_from_the_model_and_models_toml_and_are_shown(
    fleet: tuple[GatewayProcess, NeuronProcess], client: openai.OpenAI
) -> None:
    gw = fleet[0]
    configured = {"temperature": 0.0, "top_p": 0.5, "top_k": None, "repetition_penalty": None}
    assert _sampling_card(gw, "tuned") == configured  # not loaded: models.toml's alone
    plain = _sampling_card(gw, "tiny")
    messages: Any = [{"role": "user", "content": "Tell me a story."}]
    replies = [
        client.chat.completions.create(
            model="tuned", messages=messages, max_tokens=12, extra_body={"ignore_eos": True}
        )
        for _ in range(2)
    ]
    # temperature 0 from models.toml (over the model's 0.7): greedy, so both agree.
    assert replies[0].choices[0].message.content == replies[1].choices[0].message.content
    in_use = {"temperature": 0.0, "top_p": 0.5, "top_k": 7, "repetition_penalty": None}
    deadline = time.monotonic() + 20
    while _sampling_card(gw, "tuned") != in_use:  # the gateway polls the neuron's status
        assert time.monotonic() < deadline, _sampling_card(gw, "tuned")
        time.sleep(0.1)
    assert plain is None
    shown = subprocess.run(
        [sys.executable, "-m", "cortex", "status", "--gateway", gw.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "defaults: temperature 0, top_p 0.5, top_k 7" in shown


def test_reasoning_controls_reach_the_template_in_both_dialects(
    fleet: tuple[GatewayProcess, NeuronProcess], client: openai.OpenAI
) -> None:
    """The demo template has Qwen3's switch: thinking off adds an empty think block to the
    prompt (``<think>\\n\\n</think>\\n\\n``), which shows in the prompt's token count."""
    messages: Any = [{"role": "user", "content": "Is 7 prime?"}]

    def prompt_tokens(**extra: Any) -> int:
        reply = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=1, **extra
        )
        assert reply.usage is not None
        return reply.usage.prompt_tokens

    default = prompt_tokens()
    off = prompt_tokens(reasoning_effort="none")
    assert off > default
    assert prompt_tokens(reasoning_effort="high") == default
    assert prompt_tokens(extra_body={"chat_template_kwargs": {"enable_thinking": False}}) == off
    with pytest.raises(openai.BadRequestError) as err:
        prompt_tokens(extra_body={"chat_template_kwargs": {"bogus": 1}})
    assert err.value.body["param"] == "chat_template_kwargs.bogus"  # type: ignore[index]

    an = anthropic.Anthropic(base_url=fleet[0].url, api_key="unused", max_retries=0)

    def input_tokens(**extra: Any) -> int:
        reply = an.messages.create(model="tiny", messages=messages, max_tokens=4, **extra)
        return reply.usage.input_tokens + (reply.usage.cache_read_input_tokens or 0)

    assert input_tokens(thinking={"type": "disabled"}) == off
    budgeted = {"type": "enabled", "budget_tokens": 1024}
    assert input_tokens(thinking=budgeted) == default  # on, within a budget the engine keeps
