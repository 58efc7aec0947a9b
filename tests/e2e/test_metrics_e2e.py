"""Metrics across real processes: a gateway in front of one neuron running the tiny demo model.

The neuron has room for one model at a time, so the second model's first request is a cold
load that evicts the first. Token counters must equal the usage the clients were given.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess
from tests.prometheus_samples import Samples, samples, total

pytestmark = pytest.mark.slow

MODELS = [{"id": m, "source": "tiny", "vram_gb": 0.6, "context_length": 2048} for m in ("a", "b")]


def _scrape(url: str, token: str | None = None) -> Samples:
    request = urllib.request.Request(url + "/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return samples(resp.read())


@pytest.fixture(scope="module")
def fleet(
    start_neuron: Callable[..., NeuronProcess],
    model_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, NeuronProcess]]:
    neuron = start_neuron(name="n1", model_roots=[model_root], cpu_memory_budget_gb=1.0)
    gw = GatewayProcess.start(tmp_path_factory.mktemp("gw"), neurons={"n1": neuron}, models=MODELS)
    yield gw, neuron
    gw.stop()


def test_metrics_match_what_clients_were_told(fleet: tuple[GatewayProcess, NeuronProcess]) -> None:
    gw, neuron = fleet
    oa = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    an = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    prompt = completion = 0

    done = oa.chat.completions.create(model="a", messages=messages, max_tokens=4)  # cold load
    assert done.usage is not None
    prompt, completion = (
        prompt + done.usage.prompt_tokens,
        completion + done.usage.completion_tokens,
    )
    stream = oa.chat.completions.create(
        model="a",
        messages=messages,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage is not None][-1]
    prompt, completion = prompt + usage.prompt_tokens, completion + usage.completion_tokens
    reply = an.messages.create(model="b", messages=messages, max_tokens=4)  # evicts a
    prompt, completion = prompt + reply.usage.input_tokens, completion + reply.usage.output_tokens
    with an.messages.stream(model="b", messages=messages, max_tokens=4) as events:
        final = events.get_final_message()
    prompt, completion = prompt + final.usage.input_tokens, completion + final.usage.output_tokens
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="nope", messages=messages)

    # A stream is recorded when its handler returns, a moment after the client read its end.
    deadline = time.monotonic() + 5
    while total(g := _scrape(gw.metrics_url), "cortex_requests_total", status="200") < 4:
        assert time.monotonic() < deadline, "the gateway never recorded four finished requests"
        time.sleep(0.05)
    assert total(g, "cortex_requests_total", status="200") == 4
    assert total(g, "cortex_requests_total", model="a", route="/v1/chat/completions") == 2
    assert total(g, "cortex_requests_total", model="b", route="/v1/messages") == 2
    assert total(g, "cortex_requests_total", model="-", status="404") == 1
    assert total(g, "cortex_tokens_total", kind="prompt") == prompt
    assert total(g, "cortex_tokens_total", kind="completion") == completion
    assert total(g, "cortex_time_to_first_token_seconds_count") == 2  # the two streams
    assert total(g, "cortex_model_loads_total", node="n1", result="ok") == 2
    assert total(g, "cortex_evictions_total", model="a", node="n1") == 1
    assert total(g, "cortex_neuron_up", node="n1") == 1
    assert total(g, "cortex_model_resident", model="b", node="n1") == 1
    assert total(g, "cortex_gpu_memory_bytes", node="n1", device="cpu", state="total") == 1e9
    assert total(g, "cortex_requests_in_flight") == 0

    deadline = time.monotonic() + 5
    while total(n := _scrape(neuron.url, neuron.token), "cortex_requests_total", status="200") < 4:
        assert time.monotonic() < deadline, "the neuron never recorded four finished requests"
        time.sleep(0.05)
    assert total(n, "cortex_requests_total", status="200") == 4
    assert total(n, "cortex_tokens_total", kind="prompt") == prompt
    assert total(n, "cortex_tokens_total", kind="completion") == completion
    assert total(n, "cortex_model_loads_total", result="ok") == 2
    assert total(n, "cortex_model_resident", model="b") == 1
