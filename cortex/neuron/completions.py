"""POST /v1/chat/completions: one request, one sequence per choice (``n``), streamed or not.

Pipeline: decode -> lease the model (404 / 429 here) -> prompt ids and budget (400s here) ->
stream headers and role chunk -> wait for admission (SSE heartbeats meanwhile) -> harness
events -> stop strings (stops.py) -> tool-call parser (tools.py) -> OpenAI JSON or SSE.
Stream headers go out before the admission wait so a request queued behind others is visibly
alive to the gateway; everything that can be refused with a status is checked before them.
A request for ``n`` choices submits ``n`` sequences on the same prompt at once (the harness's
prefix cache computes the prompt's KV once) and counts them as one admission.

Cancellation: the server runs with aiohttp's ``handler_cancellation``, so a client hang-up
cancels this handler's task wherever it waits; the harness iterator is closed in a ``finally``
(``contextlib.aclosing``), which by the Harness contract cancels the sequence within one decode
step, and the lease returns the admission place. A failed write on a stream ends it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from cortex import sse
from cortex.errors import CortexError, InternalError
from cortex.neuron import chunks, prompt
from cortex.neuron.capabilities import refuse_unsupported_chat
from cortex.neuron.constrain import constraint_for
from cortex.neuron.constraints import TokenLogprob, ToolCalls
from cortex.neuron.harness import LoadedModel, SamplingParams
from cortex.neuron.lifecycle import ModelManager
from cortex.neuron.metrics import METRICS
from cortex.neuron.outcome import Outcome, recording
from cortex.neuron.slot import Lease, Slot
from cortex.neuron.stops import StopMatcher
from cortex.neuron.tools import ContentEvent, ParsedEvent, ToolParser, get_parser
from cortex.protocol import decode, openai

log = logging.getLogger(__name__)

T = TypeVar("T")
HEARTBEAT = sse.comment(b"queued")  # clients and the gateway's relay skip comments


class Plan:
    """Everything decided before the first token, for one choice (``index``)."""

    __slots__ = ("index", "logprobs", "params", "parser", "prefix", "prompt_ids", "stops")

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        stops: list[str],
        parser: Callable[[], ToolParser] | None,
        prefix: str = "",
        index: int = 0,
    ) -> None:
        self.prompt_ids, self.params, self.stops, self.parser = prompt_ids, params, stops, parser
        self.prefix = prefix  # forced tool call opening: in the prompt, and fed to the parser
        self.index = index
        # Each generated token's logprobs when asked for; the stream takes them as it goes.
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None

    def choices(self, n: int) -> list[Plan]:
        """This plan as choice 0 and ``n - 1`` more, each its own sequence on the same prompt
        (the harness's prefix cache shares the prompt's KV), choice i sampled with seed + i
        so a seeded request stays reproducible and its choices differ."""
        plans = [self]
        for i in range(1, n):
            seed = None if self.params.seed is None else self.params.seed + i
            params = msgspec.structs.replace(self.params, seed=seed)
            plans.append(Plan(self.prompt_ids, params, self.stops, self.parser, self.prefix, i))
        return plans


async def handle(request: web.Request, manager: ModelManager) -> web.StreamResponse:
    body = decode(await request.read(), openai.ChatCompletionRequest)
    with recording(functools.partial(request.app[METRICS].finished, body.model)) as outcome:
        return await _answer(request, manager, body, outcome)


async def _answer(
    request: web.Request,
    manager: ModelManager,
    body: openai.ChatCompletionRequest,
    outcome: Outcome,
) -> web.StreamResponse:
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    response: web.StreamResponse | None = None
    try:
        async with manager.lease(body.model) as lease:  # 404 / 429 as statuses
            slot = lease.slot
            plans = (await _plan(body, lease.model, slot)).choices(body.n)
            outcome.prompt_tokens = len(plans[0].prompt_ids)
            outcome.others = [Outcome() for _ in plans[1:]]
            if not body.stream:
                await manager.admit(lease)
                outcome.admitted = time.perf_counter()
                completion = await _complete(body, lease.model, plans, ident, created, outcome)
                return web.Response(body=chunks.encode(completion), content_type="application/json")
            encs = [chunks.ChunkEncoder(ident, created, body.model, p.index) for p in plans]
            response = await _open_stream(request, encs)
            await manager.admit(lease, functools.partial(response.write, HEARTBEAT))
            outcome.admitted = time.perf_counter()
            ping = functools.partial(response.write, HEARTBEAT)
            return await _stream(response, encs, body, lease, plans, outcome, ping, manager)
    except CortexError as exc:
        if response is None:
            raise
        outcome.status = exc.status  # refused or evicted after the headers went out
        await response.write(chunks.error_event(exc) + chunks.DONE)
        await response.write_eof()
        return response


async def _open_stream(request: web.Request, encs: list[chunks.ChunkEncoder]) -> web.StreamResponse:
    """Headers and the role chunk of each choice, sent before admission: a request queued
    behind others is visibly alive to the gateway (heartbeats follow while it waits) instead
    of silent."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    role = openai.Delta(role="assistant", content="")
    await response.write(b"".join(enc.delta(role) for enc in encs))
    return response


async def _plan(body: openai.ChatCompletionRequest, model: LoadedModel, slot: Slot) -> Plan:
    features = slot.sampling
    refuse_unsupported_chat(body, features, model.model_id)
    messages = prompt.template_messages(body.messages, vision=slot.vision)
    use_tools = bool(body.tools) and body.tool_choice != "none"
    tools = prompt.template_tools(body.tools) if use_tools else None
    tool_parser = slot.request.tool_parser
    parser = get_parser(tool_parser) if use_tools and tool_parser != "none" else None
    constraint = constraint_for(
        body, parser, supported=features.constraints, model_id=model.model_id
    )
    forced_by_grammar = isinstance(constraint, ToolCalls) and constraint.forced
    prefix = "" if forced_by_grammar else prompt.tool_call_prefix(body, parser, model.model_id)
    variables = prompt.template_variables(body, model.chat_variables, model.model_id)
    encode = functools.partial(model.encode_chat, prefix=prefix, variables=variables)
    ids = await asyncio.to_thread(encode, messages, tools)
    budget = prompt.completion_budget(
        len(ids), body.completion_limit, model.context_length, slot.request.default_max_tokens
    )
    params = prompt.sampling_params(
        body, budget, constraint, slot.sampling_defaults, body.thinking_token_budget
    )
    if constraint is not None or params.logit_bias:
        await asyncio.to_thread(model.prepare, params)  # compile the grammar: a 400 comes here
    return Plan(ids, params, body.stop_list, parser, prefix)


async def texts(model: LoadedModel, plan: Plan, outcome: Outcome) -> AsyncGenerator[str, None]:
    """Generated text with stop strings cut out; closing it cancels the sequence."""
    matcher = StopMatcher(plan.stops)
    events = model.generate(plan.prompt_ids, plan.params)
    async with _closing(events):
        async for step in events:
            outcome.completion_tokens = step.completion_tokens
            outcome.cached_tokens = step.cached_tokens
            if plan.logprobs is not None and step.logprobs:
                plan.logprobs += step.logprobs
            if outcome.first_token is None and step.completion_tokens:
                outcome.first_token = time.perf_counter()
            if text := matcher.feed(step.text):
                yield text
            if matcher.matched:
                outcome.finish_reason = "stop"
                outcome.stop_string = matcher.matched
                return
            if step.finish_reason is not None:
                outcome.finish_reason = step.finish_reason
                if tail := matcher.flush():
                    yield tail
                return


async def _complete(
    body: openai.ChatCompletionRequest,
    model: LoadedModel,
    plans: list[Plan],
    ident: str,
    created: int,
    outcome: Outcome,
) -> openai.ChatCompletion:
    outcomes = [outcome, *outcome.others]
    choices = await _all(
        [_choice(model, plan, out) for plan, out in zip(plans, outcomes, strict=True)]
    )
    return openai.ChatCompletion(
        id=ident, created=created, model=body.model, choices=choices, usage=usage(plans, outcome)
    )


async def _choice(model: LoadedModel, plan: Plan, outcome: Outcome) -> openai.Choice:
    async with contextlib.aclosing(texts(model, plan, outcome)) as stream:
        text = "".join([piece async for piece in stream])
    content: str | None = text
    calls: list[openai.ToolCall] = []
    if plan.parser is not None:
        content, calls = plan.parser().parse_complete(plan.prefix + text)
    return openai.Choice(
        index=plan.index,
        message=openai.ResponseMessage(content=content, tool_calls=calls or None),
        finish_reason="tool_calls" if calls else outcome.finish_reason,
        stop_reason=outcome.stop_string,
        logprobs=_take_logprobs(plan),
    )


async def _all(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``coros`` together (one per choice); the first failure cancels the others."""
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


async def _stream(
    response: web.StreamResponse,
    encs: list[chunks.ChunkEncoder],
    body: openai.ChatCompletionRequest,
    lease: Lease,
    plans: list[Plan],
    outcome: Outcome,
    ping: Callable[[], Awaitable[None]],
    manager: ModelManager,
) -> web.StreamResponse:
    """Errors after the headers went out become an SSE error event before ``[DONE]``. Until
    the first text (a long prompt's prefill can take minutes on a CPU), a heartbeat comment
    goes out every ``heartbeat_s`` so the stream stays visibly alive. With ``n`` > 1 the
    choices' chunks interleave as their tokens come, each with its choice index."""
    write = response.write
    outcomes = [outcome, *outcome.others]
    streams = [
        _choice_chunks(enc, lease.model, plan, out)
        for enc, plan, out in zip(encs, plans, outcomes, strict=True)
    ]
    try:
        async for data in _paced(_merged(streams), manager.heartbeat_s, ping):
            await write(data)
        if body.wants_usage_chunk:
            await write(encs[0].usage(usage(plans, outcome)))
    except CortexError as exc:  # the status counted is the error's, as text completions do
        outcome.status = exc.status
        await write(chunks.error_event(exc))
    except asyncio.CancelledError:
        if (evicted := lease.eviction_error()) is None:
            raise
        outcome.status = evicted.status
        await write(chunks.error_event(evicted))
    except ConnectionError:
        raise
    except Exception:
        log.exception("generation failed for %s", body.model)
        outcome.status = 500
        await write(chunks.error_event(InternalError("generation failed")))
    await write(chunks.DONE)
    await response.write_eof()
    return response


async def _choice_chunks(
    enc: chunks.ChunkEncoder, model: LoadedModel, plan: Plan, outcome: Outcome
) -> AsyncGenerator[bytes, None]:
    """One choice's SSE chunks: its text or tool-call pieces, then its finish chunk. A forced
    call's opening (``plan.prefix``) is parsed first but sent with the first generated text,
    so the heartbeats go on until the prompt is read."""
    parser = plan.parser() if plan.parser is not None else None
    held = list(parser.feed(plan.prefix)) if parser is not None else []
    async with contextlib.aclosing(texts(model, plan, outcome)) as stream:
        async for text in stream:
            for piece in held:
                yield _piece(enc, piece, plan)
            held = []
            if parser is None:
                yield _content(enc, text, plan)
            else:
                for piece in parser.feed(text):
                    yield _piece(enc, piece, plan)
    for piece in [*held, *(parser.finish() if parser is not None else ())]:
        yield _piece(enc, piece, plan)
    tool_calls = parser is not None and parser.saw_tool_calls
    finish = "tool_calls" if tool_calls else outcome.finish_reason
    yield enc.delta(openai.Delta(), finish, outcome.stop_string, _take_logprobs(plan))


async def _merged(streams: list[AsyncGenerator[bytes, None]]) -> AsyncGenerator[bytes, None]:
    """The items of every stream as they come (one stream: itself, no tasks). The first
    failure ends the merge and is raised; leaving the merge cancels the streams still running
    (each closes its harness sequence)."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for data in only:
                yield data
        return
    queue: asyncio.Queue[bytes | _Ended] = asyncio.Queue()

    async def pump(stream: AsyncGenerator[bytes, None]) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for data in stream:
                    queue.put_nowait(data)
        except Exception as exc:
            queue.put_nowait(_Ended(exc))
        else:
            queue.put_nowait(_Ended(None))

    tasks = [asyncio.ensure_future(pump(stream)) for stream in streams]
    try:
        running = len(tasks)
        while running:
            got = await queue.get()
            if not isinstance(got, _Ended):
                yield got
            elif got.error is not None:
                raise got.error
            else:
                running -= 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


class _Ended:
    """A merged stream's end: ``error`` None when it finished, else what ended it."""

    __slots__ = ("error",)

    def __init__(self, error: Exception | None) -> None:
        self.error = error


async def _paced(
    stream: AsyncIterator[T], every_s: float, ping: Callable[[], Awaitable[None]]
) -> AsyncGenerator[T, None]:
    """``stream``'s items; until the first arrives (a long prompt's prefill), ``ping`` every
    ``every_s``. After it, tokens flow and items pass straight through (no task per token).

    The first item is awaited in a task that a ping never cancels (cancelling it would cancel
    the generation); a cancellation of this generator (client hang-up) cancels that task too.
    """
    first = asyncio.ensure_future(_next_or_end(stream))
    try:
        while not (await asyncio.wait({first}, timeout=every_s))[0]:
            await ping()
    except BaseException:
        first.cancel()
        await asyncio.wait({first})  # the generator must stop running before it is closed
        raise
    more, item = first.result()
    if not more:
        return
    yield item  # type: ignore[misc]  # an item when ``more``
    async for item in stream:
        yield item


async def _next_or_end(stream: AsyncIterator[T]) -> tuple[bool, T | None]:
    try:
        return True, await anext(stream)
    except StopAsyncIteration:
        return False, None


def _piece(enc: chunks.ChunkEncoder, piece: ParsedEvent, plan: Plan) -> bytes:
    if isinstance(piece, ContentEvent):
        return _content(enc, piece.text, plan)
    delta = openai.Delta(tool_calls=[piece.as_delta()])
    return enc.delta(delta, logprobs=_take_logprobs(plan))


def _content(enc: chunks.ChunkEncoder, text: str, plan: Plan) -> bytes:
    """A content chunk; with logprobs asked for, it carries those of the tokens generated since
    the last chunk (text held back by a stop string or a parser goes out later, so a chunk's
    logprobs cover the tokens that produced it or came before it)."""
    if plan.logprobs is None:
        return enc.content(text)
    return enc.delta(openai.Delta(content=text), logprobs=_take_logprobs(plan))


def _take_logprobs(plan: Plan) -> openai.ChoiceLogprobs | None:
    """The logprobs gathered so far (emptied), in OpenAI's shape; None when not asked for."""
    if plan.logprobs is None:
        return None
    taken, plan.logprobs = plan.logprobs, []
    return openai.ChoiceLogprobs(content=[_logprob_entry(entry) for entry in taken])


def _logprob_entry(entry: TokenLogprob) -> openai.LogprobEntry:
    top = [
        openai.TopLogprobEntry(token=alt.token, logprob=alt.logprob, bytes=alt.bytes)
        for alt in entry.top
    ]
    return openai.LogprobEntry(
        token=entry.token, logprob=entry.logprob, bytes=entry.bytes, top_logprobs=top
    )


def usage(plans: list[Plan], outcome: Outcome) -> openai.Usage:
    """The prompt counted once and every choice's tokens (OpenAI's rule for ``n``); cached
    tokens are those every choice found cached before this request (for n > 1 the prompt's
    one shared prefill shows in ``cortex_prefix_cache_tokens_total``, per sequence)."""
    prompt_tokens = len(plans[0].prompt_ids)
    completion = outcome.all_completion_tokens
    cached = min(o.cached_tokens for o in (outcome, *outcome.others))
    return openai.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
        prompt_tokens_details=openai.PromptTokensDetails(cached_tokens=cached),
    )


@contextlib.asynccontextmanager
async def _closing(events: AsyncIterator[Any]) -> AsyncIterator[None]:
    """Close the harness iterator however we leave (done, stop string, error, cancellation)."""
    try:
        yield
    finally:
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()
