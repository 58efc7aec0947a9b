"""POST /v1/completions: a raw prompt (or a fill-in-the-middle prefix and ``suffix``) continued.

The same pipeline as chat (completions.py) without a chat template or tool parser: decode ->
lease the model (404 / 429, 400 for an embedding model) -> prompt ids through the harness's
``encode_prompt`` (400 naming ``suffix`` when the tokenizer has no FIM tokens) and budget ->
admission -> ``completions.texts`` (stop strings) -> OpenAI ``text_completion`` JSON or SSE.
Prefix reuse is the harness's: an editor resending the same file with a small edit near the
cursor finds the file's head in the KV cache. Cancellation is as for chat.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid

import msgspec
from aiohttp import web

from cortex import sse
from cortex.errors import ContextLengthExceeded, CortexError, InternalError, InvalidRequest
from cortex.neuron import chunks
from cortex.neuron.completions import HEARTBEAT, Plan, _paced, texts
from cortex.neuron.harness import LoadedModel, SamplingParams
from cortex.neuron.lifecycle import ModelManager
from cortex.neuron.metrics import METRICS
from cortex.neuron.outcome import Outcome, recording
from cortex.neuron.prompt import completion_budget
from cortex.neuron.slot import Lease
from cortex.protocol import decode, openai
from cortex.protocol.completions import (
    DEFAULT_MAX_TOKENS,
    Completion,
    CompletionChoice,
    CompletionRequest,
)

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


async def handle(request: web.Request, manager: ModelManager) -> web.StreamResponse:
    body = decode(await request.read(), CompletionRequest)
    with recording(functools.partial(request.app[METRICS].finished, body.model)) as outcome:
        return await _answer(request, manager, body, outcome)


async def _answer(
    request: web.Request, manager: ModelManager, body: CompletionRequest, outcome: Outcome
) -> web.StreamResponse:
    head = _Head(f"cmpl-{uuid.uuid4().hex}", int(time.time()), body.model)
    async with manager.lease(body.model) as lease:  # 404 / 429 / 400 (task)
        plan, echo = await _plan(body, lease.model)
        outcome.prompt_tokens = len(plan.prompt_ids)
        if not body.stream:
            await manager.admit(lease)
            outcome.admitted = time.perf_counter()
            async with contextlib.aclosing(texts(lease.model, plan, outcome)) as stream:
                text = echo + "".join([piece async for piece in stream])
            answer = head.chunk(text, outcome.finish_reason, outcome.stop_string)
            answer.usage = _usage(plan, outcome)
            return web.Response(body=_encoder.encode(answer), content_type="application/json")
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)  # headers before admission, as for chat
        try:
            await _stream(response, manager, lease, plan, outcome, echo, head, body)
        except CortexError as exc:  # refused, evicted or failed after the headers went out
            outcome.status = exc.status
            await response.write(chunks.error_event(exc))
        except asyncio.CancelledError:
            if (evicted := lease.eviction_error()) is None:
                raise
            outcome.status = evicted.status
            await response.write(chunks.error_event(evicted))
        except ConnectionError:
            raise
        except Exception:
            log.exception("generation failed for %s", body.model)
            outcome.status = 500
            await response.write(chunks.error_event(InternalError("generation failed")))
        await response.write(chunks.DONE)
        await response.write_eof()
        return response


async def _stream(
    response: web.StreamResponse,
    manager: ModelManager,
    lease: Lease,
    plan: Plan,
    outcome: Outcome,
    echo: str,
    head: _Head,
    body: CompletionRequest,
) -> None:
    """Admission (heartbeats while waiting), then a chunk per piece of text, the finish chunk
    and, when asked, the usage-only chunk."""
    ping = functools.partial(response.write, HEARTBEAT)
    await manager.admit(lease, ping)
    outcome.admitted = time.perf_counter()
    if echo:
        await response.write(head.event(echo))
    async with contextlib.aclosing(texts(lease.model, plan, outcome)) as stream:
        async for text in _paced(stream, manager.heartbeat_s, ping):
            await response.write(head.event(text))
    await response.write(head.event("", outcome.finish_reason, outcome.stop_string))
    if body.wants_usage_chunk:
        usage = head.chunk(None)
        usage.usage = _usage(plan, outcome)
        await response.write(sse.frame(_encoder.encode(usage)))


class _Head:
    """The fields every chunk of one answer repeats."""

    def __init__(self, ident: str, created: int, model: str) -> None:
        self.ident, self.created, self.model = ident, created, model

    def chunk(
        self, text: str | None, finish: openai.FinishReason | None = None, stop: str | None = None
    ) -> Completion:
        """A chunk of ``text``; None: no choices (the usage-only chunk)."""
        choices = (
            []
            if text is None
            else [CompletionChoice(text=text, finish_reason=finish, stop_reason=stop)]
        )
        return Completion(id=self.ident, created=self.created, model=self.model, choices=choices)

    def event(
        self, text: str, finish: openai.FinishReason | None = None, stop: str | None = None
    ) -> bytes:
        return sse.frame(_encoder.encode(self.chunk(text, finish, stop)))


async def _plan(body: CompletionRequest, model: LoadedModel) -> tuple[Plan, str]:
    """The prompt ids and sampling, and the text ``echo`` puts before the output."""
    prompt = body.single_prompt
    if isinstance(prompt, str):
        ids = await asyncio.to_thread(model.encode_prompt, prompt, body.suffix)
        echoed = prompt
    elif body.suffix is not None:
        raise InvalidRequest("suffix needs a string prompt, not token ids", param="suffix")
    else:
        ids = list(prompt)
        echoed = model.decode_tokens(ids) if body.echo else ""
    if not ids:
        raise InvalidRequest("the prompt encodes to no tokens", param="prompt")
    context = model.context_length
    if 0 < context <= len(ids):
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, your prompt "
            f"is {len(ids)} tokens. Please reduce the length of the prompt.",
            param="prompt",
        )
    wanted = body.max_tokens if body.max_tokens is not None else DEFAULT_MAX_TOKENS
    params = SamplingParams(
        max_new_tokens=completion_budget(len(ids), wanted, context),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )
    return Plan(ids, params, body.stop_list, None), echoed if body.echo else ""


def _usage(plan: Plan, outcome: Outcome) -> openai.Usage:
    prompt_tokens = len(plan.prompt_ids)
    return openai.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        total_tokens=prompt_tokens + outcome.completion_tokens,
        prompt_tokens_details=openai.PromptTokensDetails(cached_tokens=outcome.cached_tokens),
    )
