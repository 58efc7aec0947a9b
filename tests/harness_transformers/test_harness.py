from __future__ import annotations

import importlib.metadata
import threading
from pathlib import Path
from typing import Any

import cortex_transformers.harness as harness_module
import msgspec
import pytest
from cortex_transformers import loading
from cortex_transformers.harness import TransformersHarness, step_tokens

from cortex.errors import InsufficientMemory, InvalidRequest
from cortex.neuron.harness import LoadOptions, SamplingParams
from cortex.protocol.neuron import LoadRequest

from .conftest import load

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_harness_is_registered_as_an_entry_point() -> None:
    (entry,) = [
        e
        for e in importlib.metadata.entry_points(group="cortex.harnesses")
        if e.name == "transformers"
    ]
    assert entry.load() is TransformersHarness
    assert set(TransformersHarness().info().quantizations) == {
        "none",
        "8bit",
        "4bit",
        "int8",
        "int4",
    }


def test_load_reports_context_bytes_and_progress(demo_dir: Path) -> None:
    stages: list[tuple[float, str]] = []
    request = LoadRequest(model="demo", source=str(demo_dir))
    model = TransformersHarness().load(
        request, str(demo_dir), "cpu", LoadOptions(), lambda f, s: stages.append((f, s))
    )
    try:
        assert model.context_length == 4096
        assert model.bytes_used > 800_000
        assert [s for _, s in stages] == ["tokenizer", "weights", "cache", "warm-up", "loaded"]
        assert [f for f, _ in stages] == sorted(f for f, _ in stages)
    finally:
        model.unload()


def test_the_step_budget_defaults_by_device(demo) -> None:
    assert demo._scheduler.max_batch_tokens == step_tokens("cpu") == 512  # LoadOptions() says 0
    assert step_tokens("cuda:0") == 2048


def test_encode_chat_renders_tools_calls_and_results(demo) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    ids = demo.encode_chat(messages, TOOLS)
    assert all(isinstance(i, int) for i in ids)
    text = demo._tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    )
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_template_errors_are_invalid_requests(demo) -> None:
    with pytest.raises(InvalidRequest):
        demo.encode_chat(
            [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}], None
        )


def test_chat_template_override(demo_dir: Path) -> None:
    model = load(demo_dir, chat_template="{% for m in messages %}{{ m.content }}|{% endfor %}")
    try:
        assert (
            model._tokenizer.decode(model.encode_chat([{"role": "user", "content": "hi"}], None))
            == "hi|"
        )
    finally:
        model.unload()


def test_missing_source_is_an_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        load(tmp_path / "nothing-here")


def test_quantization_without_bitsandbytes_is_an_invalid_request(monkeypatch) -> None:
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InvalidRequest, match="bitsandbytes"):
        loading.quantization_config("4bit", "cpu")


def test_memory_budget_limits_the_batch(demo_dir: Path) -> None:
    request = LoadRequest(model="demo", source=str(demo_dir))
    with pytest.raises(InsufficientMemory):
        TransformersHarness().load(
            request,
            str(demo_dir),
            "cpu",
            LoadOptions(memory_budget_bytes=1_000_000),
            lambda f, s: None,
        )
    model = TransformersHarness().load(
        request, str(demo_dir), "cpu", LoadOptions(memory_budget_bytes=8_000_000), lambda f, s: None
    )
    try:
        assert model.bytes_used <= 8_000_000
    finally:
        model.unload()


@pytest.mark.parametrize(
    ("quantization", "layer"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")]
)
async def test_quantized_load_on_cpu_generates(
    demo_dir: Path, quantization: str, layer: str
) -> None:
    model = load(demo_dir, quantization=quantization)
    try:
        assert type(model._model.model.layers[0].mlp.up_proj).__name__ == layer
        prompt = model.encode_chat([{"role": "user", "content": "hi"}], None)
        events = [
            e async for e in model.generate(prompt, SamplingParams(max_new_tokens=3, temperature=0))
        ]
        assert events[-1].completion_tokens in (1, 2, 3)
    finally:
        model.unload()


def test_estimate_matches_the_loaded_weights(demo, demo_dir: Path) -> None:
    harness = TransformersHarness()
    request = LoadRequest(model="demo", source=str(demo_dir), device="cpu")
    full = harness.estimate_bytes(request, str(demo_dir))
    assert abs(full - demo._model.get_memory_footprint()) < full / 100  # buffers aside
    quantized = msgspec.structs.replace(request, quantization="4bit")
    assert full / 4 < harness.estimate_bytes(quantized, str(demo_dir)) < full
    assert harness.estimate_bytes(request, "not/a/dir") == 0


def test_two_loads_in_one_process_take_turns(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers' from_pretrained is not thread-safe (two at once left one model answering
    garbage): a second load waits, says so in its progress, and starts when the first is done."""
    real = harness_module.load_model
    first_inside, second_waiting = threading.Event(), threading.Event()
    guard, active, most = threading.Lock(), [0], [0]

    def tracked(*args: Any, **kwargs: Any) -> Any:
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        first_inside.set()
        second_waiting.wait(timeout=5)  # without turns, the second load would enter meanwhile
        try:
            return real(*args, **kwargs)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(harness_module, "load_model", tracked)
    stages: list[str] = []
    loaded: list[Any] = []

    def second_progress(fraction: float, stage: str) -> None:
        stages.append(stage)
        if stage.startswith("waiting"):
            second_waiting.set()

    def load_one(progress: Any) -> None:
        spec = LoadRequest(model="demo", source=str(demo_dir))
        loaded.append(
            TransformersHarness().load(spec, str(demo_dir), "cpu", LoadOptions(), progress)
        )

    first = threading.Thread(target=load_one, args=(lambda f, s: None,))
    first.start()
    assert first_inside.wait(timeout=60)
    second = threading.Thread(target=load_one, args=(second_progress,))
    second.start()
    first.join(timeout=120)
    second.join(timeout=120)
    try:
        assert len(loaded) == 2 and most[0] == 1
        assert stages[0] == "waiting for another load to finish" and stages[-1] == "loaded"
    finally:
        for model in loaded:
            model.unload()
