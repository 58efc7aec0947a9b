"""An example harness: echoes the last user message back, one character per token.

It shows the whole plugin contract (``cortex.neuron.harness``) with nothing in the way: no
weights, no torch, no threads. Tokens are Unicode code points; the "chat template" joins
messages with ASCII record separators, so the prompt can be decoded and the last user message
found again inside ``generate``, which only ever sees token ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, ClassVar, Literal

from cortex.errors import ContextLengthExceeded, InvalidRequest, ModelNotLoaded
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

__version__ = "0.1.0"

_RECORD = "\x1e"  # between messages
_UNIT = "\x1f"  # between a message's role and its content
_DEFAULT_CONTEXT = 4096


class EchoModel(LoadedModel):
    """A "model" that repeats the last user message of its prompt."""

    def __init__(self, model_id: str, context_length: int) -> None:
        self.model_id = model_id
        self.device = "cpu"
        self.bytes_used = 0
        self.context_length = context_length
        self._unloaded = False

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        prefix: str = "",
        *,
        variables: dict[str, Any] | None = None,
    ) -> list[int]:
        """Render ``RS role US content`` per message plus the assistant prompt and ``prefix``;
        ids = code points. It has no template variables (``chat_variables`` is empty), so the
        neuron refuses every ``chat_template_kwargs`` key and ``variables`` stays empty.

        Separator characters inside content are dropped so they cannot forge a message. Tools
        are accepted and ignored: this model never calls one.
        """
        parts: list[str] = []
        for message in messages:
            role = message.get("role")
            content = message.get("content") or ""
            if not isinstance(role, str) or not isinstance(content, str):
                raise InvalidRequest("echo: each message needs a string role and content")
            clean = content.replace(_RECORD, "").replace(_UNIT, "")
            parts.append(f"{_RECORD}{role}{_UNIT}{clean}")
        parts.append(f"{_RECORD}assistant{_UNIT}{prefix}")
        ids = [ord(ch) for ch in "".join(parts)]
        if len(ids) > self.context_length:
            raise ContextLengthExceeded(
                f"prompt is {len(ids)} tokens, the context length is {self.context_length}"
            )
        return ids

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncGenerator[TokenEvent, None]:
        """Yield the last user message one character at a time (sampling is ignored).

        Each step awaits once, so closing the iterator or cancelling the consumer stops the
        sequence before the next character, as the contract requires.
        """
        if self._unloaded:
            raise ModelNotLoaded(f"model {self.model_id!r} is unloaded")
        reply = _last_user_message("".join(map(chr, prompt_ids)))
        budget = max(0, min(params.max_new_tokens, self.context_length - len(prompt_ids)))
        text = reply[:budget]
        finish: Literal["stop", "length"] = "stop" if text == reply else "length"
        if not text:
            yield TokenEvent(text="", completion_tokens=0, finish_reason=finish)
            return
        for count, ch in enumerate(text, start=1):
            await asyncio.sleep(0)
            last = count == len(text)
            yield TokenEvent(
                text=ch, completion_tokens=count, finish_reason=finish if last else None
            )

    def unload(self) -> None:
        self._unloaded = True


def _last_user_message(prompt: str) -> str:
    for record in reversed(prompt.split(_RECORD)):
        role, _, content = record.partition(_UNIT)
        if role == "user":
            return content
    return ""


class EchoHarness(Harness):
    """Loads ``EchoModel``s; any source is accepted since nothing is read from it."""

    name: ClassVar[str] = "echo"

    def info(self) -> HarnessInfo:
        return HarnessInfo(name=self.name, version=__version__)

    def load(
        self,
        request: LoadRequest,
        path: str,
        device: str,
        options: LoadOptions,
        progress: ProgressFn,
    ) -> LoadedModel:
        if device != "cpu":
            raise InvalidRequest(f"echo runs on cpu only, not {device!r}", param="device")
        if request.quantization != "none":
            raise InvalidRequest("echo has nothing to quantize", param="quantization")
        progress(1.0, "ready")
        return EchoModel(request.model, request.context_length or _DEFAULT_CONTEXT)
