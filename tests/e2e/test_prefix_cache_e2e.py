"""Prefix reuse seen by clients: a gateway and a neuron running the tiny demo model.

A coding agent resends its conversation every turn; the second turn's shared prefix must come
from the KV cache and say so in usage (OpenAI ``prompt_tokens_details.cached_tokens``, Anthropic
``cache_read_input_tokens``) and in the neuron's ``cortex_prefix_cache_tokens_total``.
"""

from __future__ import annotations

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

SYSTEM = "You are a coding agent. Tools: read, write, edit, search, run tests. " * 8
MODEL = {"id": "tiny", "source": "tiny", "context_length": 4096, "vram_gb": 0.5}


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


def test_later_turns_report_their_cached_prefix(
    fleet: tuple[GatewayProcess, NeuronProcess],
) -> None:
    gw, neuron = fleet
    oa = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    messages: Any = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Find the failing test."},
    ]
    first = oa.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content or "ok"},
        {"role": "user", "content": "Now fix it."},
    ]
    second = oa.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0
    )
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens - 16 <= cached < second.usage.prompt_tokens

    an = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    reply = an.messages.create(
        model="tiny",
        system=SYSTEM,
        messages=messages[1:],
        max_tokens=8,
        extra_body={"temperature": 0},
    )
    assert reply.usage.cache_read_input_tokens is not None
    assert reply.usage.cache_read_input_tokens >= cached  # the same prompt, fully warm now
    prompts = [first.usage.prompt_tokens, second.usage.prompt_tokens]
    prompts.append(reply.usage.input_tokens + reply.usage.cache_read_input_tokens)
    assert prompts[2] == prompts[1]

    n = _scrape(neuron.url, neuron.token)
    hits = cached + reply.usage.cache_read_input_tokens
    assert total(n, "cortex_prefix_cache_tokens_total", model="tiny", result="hit") == hits
    assert total(n, "cortex_prefix_cache_tokens_total", result="miss") == sum(prompts) - hits
