"""The example plugin (harnesses/example) works the way docs/harnesses.md says a plugin does:
installed as its own distribution, found through the entry point group, driven only through
the Harness contract.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pytest

from cortex.errors import ContextLengthExceeded, InvalidRequest, ModelNotLoaded
from cortex.neuron.harness import Harness, LoadedModel, LoadOptions, SamplingParams, TokenEvent
from cortex.neuron.registry import GROUP, discover
from cortex.protocol.neuron import LoadRequest

CHAT = [
    {"role": "system", "content": "Repeat after me."},
    {"role": "user", "content": "first"},
    {"role": "assistant", "content": "first"},
    {"role": "user", "content": "héllo, wörld"},
]


def _echo_entry_point() -> EntryPoint:
    found = entry_points(group=GROUP, name="echo")
    assert found, (
        "cortex-harness-echo is not installed in this environment; `make install` installs it "
        "(pip install -e harnesses/example)"
    )
    return next(iter(found))


def _load(context_length: int = 0, device: str = "cpu") -> LoadedModel:
    harness = _echo_entry_point().load()()
    request = LoadRequest(
        model="echo", source="echo", harness="echo", context_length=context_length
    )
    progress: list[float] = []
    model: LoadedModel = harness.load(
        request, "echo", device, LoadOptions(), lambda f, _s: progress.append(f)
    )
    assert progress[-1] == 1.0
    return model


async def _collect(
    model: LoadedModel, messages: list[dict[str, Any]], max_new: int
) -> list[TokenEvent]:
    ids = model.encode_chat(messages, None)
    return [e async for e in model.generate(ids, SamplingParams(max_new_tokens=max_new))]


def test_entry_point_names_a_harness_subclass_with_the_same_name() -> None:
    cls = _echo_entry_point().load()
    assert isinstance(cls, type) and issubclass(cls, Harness)
    assert cls.name == "echo"
    assert cls().info().name == "echo"


def test_neuron_registry_discovers_it_through_the_allow_list() -> None:
    assert set(discover(allow=["echo"])) == {"echo"}
    assert discover(allow=["no-such-harness"]) == {}


async def test_generates_the_last_user_message_one_character_per_token() -> None:
    events = await _collect(_load(), CHAT, max_new=100)
    assert "".join(e.text for e in events) == "héllo, wörld"
    assert [e.completion_tokens for e in events] == list(range(1, 13))
    assert [e.finish_reason for e in events] == [None] * 11 + ["stop"]


async def test_max_new_tokens_cuts_the_echo_with_finish_reason_length() -> None:
    events = await _collect(_load(), CHAT, max_new=5)
    assert "".join(e.text for e in events) == "héllo"
    assert events[-1].finish_reason == "length"
    assert events[-1].completion_tokens == 5


async def test_closing_the_stream_stops_generation() -> None:
    model = _load()
    stream = model.generate(model.encode_chat(CHAT, None), SamplingParams(max_new_tokens=100))
    assert isinstance(stream, AsyncGenerator)  # the contract's "closing the iterator"
    first = await anext(stream)
    await stream.aclose()
    assert first.text == "h"
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


def test_prompt_longer_than_the_context_is_rejected() -> None:
    with pytest.raises(ContextLengthExceeded):
        _load(context_length=10).encode_chat(CHAT, None)


def test_gpu_devices_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        _load(device="cuda:0")


async def test_unloaded_model_refuses_to_generate() -> None:
    model = _load()
    model.unload()
    model.unload()  # idempotent
    with pytest.raises(ModelNotLoaded):
        await _collect(model, CHAT, max_new=10)
