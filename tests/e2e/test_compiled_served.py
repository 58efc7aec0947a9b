"""``compiled_decode`` with ``int4`` weights served over HTTP: a real neuron process compiling
SmolLM2's decode graph (one bucket, ``max_concurrency = 1``: ~1-2 min of compile on one core),
the OpenAI SDK asking it. Slow: behind the ``slow`` marker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.e2e.neuron_process import NeuronProcess

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_a_compiled_int4_model_answers_over_http(
    start_neuron: Callable[..., NeuronProcess], smollm2_gguf: Path
) -> None:
    from cortex import starter

    neuron = start_neuron(
        model_roots=[str(smollm2_gguf.parents[1])],
        models=[
            {
                "id": "compiled",
                "source": starter.SOURCE,
                "context_length": 2048,
                "quantization": "int4",
                "compiled_decode": True,
            }
        ],
        preload=["compiled"],
        cpu_memory_budget_gb=4.0,
        max_concurrency=1,
    )
    status = neuron.wait_for(lambda s: [m["state"] for m in s["models"]] == ["loaded"], timeout=600)
    (model,) = status["models"]
    assert model["quantization"] == "int4"
    client = openai.OpenAI(base_url=neuron.url + "/v1", api_key=neuron.token, max_retries=0)
    reply = client.chat.completions.create(
        model="compiled",
        messages=QUESTION,
        max_tokens=24,
        temperature=0,  # type: ignore[arg-type]
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    streamed = client.chat.completions.create(
        model="compiled",
        messages=QUESTION,
        max_tokens=24,
        temperature=0,
        stream=True,  # type: ignore[arg-type]
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == reply.choices[0].message.content  # the same greedy decode, token by token
    assert "loading compiled: compiling decode graphs" in neuron.log_text()
    # Where cortex's CPU kernels run, attention read the pool in place (paged_decode.cpp):
    # the load-time check found that SmolLM2's forward hands ``cortex_slots`` on.
    assert "reads a gathered copy" not in neuron.log_text()
