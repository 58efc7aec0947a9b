"""Sampling controls seen by clients (issue 21): a gateway and a neuron on the tiny demo model.

``n`` choices share one prefill through the prefix cache (the neuron's
``cortex_prefix_cache_tokens_total`` shows choices 1..n-1 reading the prompt from it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess
from tests.e2e.test_metrics_e2e import _scrape
from tests.prometheus_samples import total

MODEL = {"id": "tiny", "source": "tiny", "context_length": 2048, "vram_gb": 0.5}
BLOCK = 16  # the transformers harness's KV block size: only full blocks are shared


@pytest.fixture(scope="module")
def fleet(
    start_neuron: Callable[..., NeuronProcess],
    model_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, NeuronProcess]]:
    neuron = start_neuron(name="n1", model_roots=[model_root], cpu_memory_budget_gb=1.0)
    gw = GatewayProcess.start(tmp_path_factory.mktemp("gw"), neurons={"n1": neuron}, models=[MODEL])
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
