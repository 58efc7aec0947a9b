"""A scripted harness for in-process neuron tests: no torch, deterministic, instant.

Prompt ids are one per character of ``role: content`` lines. The reply is scripted by the last
user message: ``say:TEXT`` streams TEXT (a literal ``\\n`` in it becomes a newline) two
characters per token then stops (EOS); ``boom``
fails at the second step; ``wait:SECONDS`` is silent that long first, as a long prompt's prefill
is, then streams like anything else: ``"ab"`` until max_new_tokens (``wait:SECONDS say:TEXT``:
then TEXT, as ``say:`` does). Every step
sleeps ``step_s`` so tests can hang up or unload mid-generation.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from cortex.config import SamplingDefaults
from cortex.neuron.constraints import SamplingFeatures
from cortex.neuron.harness import (
    Harness,
    HarnessInfo,
    LoadedModel,
    LoadOptions,
    ProgressFn,
    SamplingParams,
    TokenEvent,
)
from cortex.protocol.neuron import LoadRequest

MB = 1_000_000


class FakeModel(LoadedModel):
    def __init__(self, request: LoadRequest, device: str, step_s: float) -> None:
        self.model_id = request.model
        self.device = device
        self.bytes_used = 10 * MB
        self.context_length = request.context_length or 256
        self.step_s = step_s
        self.running = 0  # sequences inside generate right now
        self.cancelled = 0  # sequences closed before their end
        self.params: list[SamplingParams] = []  # every sequence's, in submission order
        self.chat_variables = frozenset({"enable_thinking"})  # a Qwen3-like switch
        self.variables: dict[str, Any] | None = None  # the last encode_chat's
        self.unloaded = False

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        prefix: str = "",
        *,
        variables: dict[str, Any] | None = None,
    ) -> list[int]:
        self.variables = variables
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        if tools:
            text += "".join(t["function"]["name"] for t in tools)
        return [ord(c) for c in text + prefix]

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[TokenEvent]:
        last_user = "".join(map(chr, prompt_ids)).rsplit("user: ", 1)[-1].split("\n", 1)[0]
        wait_s = 0.0
        if last_user.startswith("wait:"):
            seconds, _, rest = last_user[5:].partition(" ")
            wait_s, last_user = float(seconds), rest
        # A literal backslash-n in the script stands for a newline (prompt lines end at "\n").
        script = last_user[4:].replace("\\n", "\n") if last_user.startswith("say:") else None
        pieces = [script[i : i + 2] for i in range(0, len(script), 2)] if script else []
        self.params.append(params)
        self.running += 1
        done = False
        try:
            if wait_s:
                await asyncio.sleep(wait_s)
            for n in range(1, params.max_new_tokens + 1):
                await asyncio.sleep(self.step_s)
                if script is not None and n > len(pieces):
                    done = True
                    yield TokenEvent(text="", completion_tokens=n - 1, finish_reason="stop")
                    return
                if last_user == "boom" and n == 2:
                    raise RuntimeError("device fell over")
                text = pieces[n - 1] if script is not None else "ab"
                last = n == params.max_new_tokens
                done = last
                yield TokenEvent(
                    text=text, completion_tokens=n, finish_reason="length" if last else None
                )
        finally:
            self.running -= 1
            if not done:
                self.cancelled += 1

    def unload(self) -> None:
        self.unloaded = True


class FakeHarness(Harness):
    """Loads instantly unless ``gate`` is set (then waits for it, to test single-flight)."""

    name: ClassVar[str] = "fake"

    def __init__(self) -> None:
        self.loads = 0
        self.gate: threading.Event | None = None
        self.step_s = 0.001
        self.fail_with: Exception | None = None
        self.models: list[FakeModel] = []
        self.sampling = SamplingFeatures()  # what it declares it honours (set before loading)
        self.model_defaults = SamplingDefaults()  # what its models read from their own config

    def info(self) -> HarnessInfo:
        return HarnessInfo(
            name=self.name,
            quantizations=("none", "4bit"),
            device_kinds=("cpu",),
            sampling=self.sampling,
        )

    def load(
        self,
        request: LoadRequest,
        path: str,
        device: str,
        options: LoadOptions,
        progress: ProgressFn,
    ) -> LoadedModel:
        self.loads += 1
        progress(0.5, "weights")
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail_with is not None:
            raise self.fail_with
        model = FakeModel(request, device, self.step_s)
        model.sampling_defaults = self.model_defaults
        self.models.append(model)
        return model
