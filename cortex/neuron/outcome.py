"""How one chat completion went, as the neuron's handler saw it.

Its own module so that completions.py (which fills it) and metrics.py (which records it) both
depend on it instead of on each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

from cortex.errors import CortexError
from cortex.protocol import openai


class Outcome:
    """How a request went: ``handle`` stamps admission and status, ``texts`` the generation.

    Times are perf_counter stamps; metrics.py reads them once the request is done. A request
    for ``n`` choices runs ``n`` sequences: this Outcome is the first one's, ``others`` holds
    the rest (their generation fields only), and the totals below count them all.
    """

    __slots__ = (
        "admitted",
        "cached_tokens",
        "completion_tokens",
        "finish_reason",
        "first_token",
        "others",
        "prompt_tokens",
        "started",
        "status",
        "stop_string",
    )

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.admitted: float | None = None
        self.first_token: float | None = None
        self.status = 200
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0  # prompt tokens the harness took from its prefix cache
        self.finish_reason: openai.FinishReason = "stop"
        self.stop_string: str | None = None  # reported as the vLLM-style ``stop_reason``
        self.others: list[Outcome] = []  # choices 1..n-1 of a request for n > 1

    @property
    def all_completion_tokens(self) -> int:
        """Tokens generated for every choice (usage's ``completion_tokens``)."""
        return self.completion_tokens + sum(o.completion_tokens for o in self.others)

    @property
    def cache_hits(self) -> int:
        """Prompt tokens read from the prefix cache, summed over the request's sequences: the
        choices after the first find the prompt's full blocks there (one prefill, shared)."""
        return self.cached_tokens + sum(o.cached_tokens for o in self.others)

    @property
    def cache_misses(self) -> int:
        """Prompt tokens computed, summed over the request's sequences."""
        return (1 + len(self.others)) * self.prompt_tokens - self.cache_hits


@contextlib.contextmanager
def recording(finished: Callable[[Outcome], None]) -> Iterator[Outcome]:
    """An Outcome for one request, its status set from how the block ends (a CortexError's
    status, 499 for a client hang-up, 500 for anything else) and handed to ``finished`` (the
    metrics) whatever happens."""
    outcome = Outcome()
    try:
        yield outcome
    except CortexError as exc:
        outcome.status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionError):
        outcome.status = 499  # the client hung up
        raise
    except Exception:
        outcome.status = 500
        raise
    finally:
        finished(outcome)
