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
from cortex.neuron.capabilities import refuse_unsupported
from cortex.neuron.completions import HEARTBEAT, Plan, _paced, texts, usage
from cortex.neuron.constraints import TokenLogprob
from cortex.neuron.lifecycle import ModelManager
from cortex.neuron.metrics import METRICS
from cortex.neuron.outcome import Outcome, recording
from cortex.neuron.prompt import completion_budget, sampling_params
from cortex.neuron.slot import Lease
from cortex.protocol import decode, openai
from cortex.protocol.completions import (
    DEFAULT_MAX_TOKENS,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
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
        plan, echo = await _plan(body, lease)
        outcome.prompt_tokens = len(plan.prompt_ids)
        head.offset = len(echo)
        if not body.stream:
            await manager.admit(lease)
            outcome.admitted = time.perf_counter()
            async with contextlib.aclosing(texts(lease.model, plan, outcome)) as stream:
                text = echo + "".join([piece async for piece in stream])
            answer = head.chunk(text, outcome.finish_reason, outcome.stop_string, plan)
            answer.usage = usage([plan], outcome)
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
            await response.write(head.event(text, plan=plan))
    await response.write(head.event("", outcome.finish_reason, outcome.stop_string, plan))
    if body.wants_usage_chunk:
        last = head.chunk(None)
        last.usage = usage([plan], outcome)
        await response.write(sse.frame(_encoder.encode(last)))


class _Head:
    """The fields every chunk of one answer repeats, and where the next token's text starts
    in the choice's text (``text_offset`` of the legacy logprobs)."""

    def __init__(self, ident: str, created: int, model: str) -> None:
        self.ident, self.created, self.model = ident, created, model
        self.offset = 0

    def chunk(
        self,
        text: str | None,
        finish: openai.FinishReason | None = None,
        stop: str | None = None,
        plan: Plan | None = None,
    ) -> Completion:
        """A chunk of ``text`` with the logprobs ``plan`` gathered since the last one; None:
        no choices (the usage-only chunk)."""
        if text is None:
            choices = []
        else:
            logprobs = self._logprobs(plan) if plan is not None else None
            choices = [
                CompletionChoice(
                    text=text, finish_reason=finish, stop_reason=stop, logprobs=logprobs
                )
            ]
        return Completion(id=self.ident, created=self.created, model=self.model, choices=choices)

    def event(
        self,
        text: str,
        finish: openai.FinishReason | None = None,
        stop: str | None = None,
        plan: Plan | None = None,
    ) -> bytes:
        return sse.frame(_encoder.encode(self.chunk(text, finish, stop, plan)))

    def _logprobs(self, plan: Plan) -> CompletionLogprobs | None:
        """The tokens gathered so far (taken from ``plan``), in the legacy shape."""
        if plan.logprobs is None:
            return None
        taken, plan.logprobs = plan.logprobs, []
        out = CompletionLogprobs()
        for entry in taken:
            out.tokens.append(entry.token)
            out.token_logprobs.append(entry.logprob)
            out.top_logprobs.append(_top(entry))
            out.text_offset.append(self.offset)
            self.offset += len(entry.token)
        return out


def _top(entry: TokenLogprob) -> dict[str, float]:
    """The alternatives as the legacy shape has them: text -> logprob (the chosen one too)."""
    top = {alt.token: alt.logprob for alt in entry.top}
    top.setdefault(entry.token, entry.logprob)
    return top


async def _plan(body: CompletionRequest, lease: Lease) -> tuple[Plan, str]:
    """The prompt ids and sampling, and the text ``echo`` puts before the output."""
    model, slot = lease.model, lease.slot
    refuse_unsupported(body, slot.sampling, model.model_id, count_field="logprobs")
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
    budget = completion_budget(len(ids), wanted, context)
    params = sampling_params(body, budget, defaults=slot.sampling_defaults)
    if params.logit_bias:
        await asyncio.to_thread(model.prepare, params)  # token ids out of range: a 400
    return Plan(ids, params, body.stop_list, None), echoed if body.echo else ""
