"""The gateway's recent past, for `cortex status` and the /ui charts. Pure: time comes from
``clock``.

- the last minute, exactly: requests/s, tokens/s, error rate, time to first token (p50, p95),
  and requests/s and tokens/s per model and per node;
- the last 15 minutes as 10-second buckets: the same rates per bucket plus the deepest queue
  seen in it (queue depth is sampled whenever the status is read: /ui reads it every 2 s);
- the last errors (request id, status, model, message), newest first.

Time to first token counts streams only: a non-stream answer's "first token" is its last byte.
One owner: ``Gateway.finish`` records, the status route reads, both on the event loop.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

RATE_WINDOW_S = 60.0
BUCKET_S = 10.0
HISTORY_S = 900.0
RECENT_ERRORS = 20


class Finished(msgspec.Struct, frozen=True, gc=False):
    """One finished exchange, as the history keeps it (a Struct: one is made per request)."""

    at: float  # Unix time
    request_id: str
    model: str
    node: str
    status: int
    tokens: int
    ttft_s: float | None  # streams only
    error: str | None


@dataclass
class Bucket:
    start: float
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    ttfts: list[float] = field(default_factory=list)
    queue_depth: int = 0


@dataclass(frozen=True)
class Window:
    """Rates over a span: requests/s, tokens/s, the share of requests that failed, TTFT."""

    requests_per_s: float
    tokens_per_s: float
    error_rate: float
    ttft_p50_s: float | None
    ttft_p95_s: float | None


class History:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._minute: deque[Finished] = deque()
        self._buckets: deque[Bucket] = deque()
        self._errors: deque[Finished] = deque(maxlen=RECENT_ERRORS)

    def record(self, done: Finished) -> None:
        self._minute.append(done)
        bucket = self._bucket(done.at)
        bucket.requests += 1
        bucket.tokens += done.tokens
        if done.ttft_s is not None:
            bucket.ttfts.append(done.ttft_s)
        if failed(done.status):
            bucket.errors += 1
            self._errors.appendleft(done)

    def sample_queue(self, depth: int) -> None:
        bucket = self._bucket(self._clock())
        bucket.queue_depth = max(bucket.queue_depth, depth)

    def last_minute(self) -> Window:
        self._expire()
        return _window(list(self._minute), RATE_WINDOW_S)

    def by(self, key: Callable[[Finished], str]) -> dict[str, tuple[float, float]]:
        """(requests/s, tokens/s) of the last minute per ``key`` (model or node)."""
        self._expire()
        counts: dict[str, tuple[int, int]] = {}
        for done in self._minute:
            requests, tokens = counts.get(key(done), (0, 0))
            counts[key(done)] = (requests + 1, tokens + done.tokens)
        return {k: (r / RATE_WINDOW_S, t / RATE_WINDOW_S) for k, (r, t) in counts.items()}

    def buckets(self) -> list[tuple[Bucket, Window]]:
        """Each bucket of the last 15 minutes, oldest first, with its rates (the current one's
        over the part of it that has passed, so a chart does not dip at its right end)."""
        self._expire()
        now = self._clock()
        return [
            (b, _bucket_window(b, min(BUCKET_S, max(1.0, now - b.start)))) for b in self._buckets
        ]

    def recent_errors(self) -> list[Finished]:
        return list(self._errors)

    def _bucket(self, at: float) -> Bucket:
        start = at - at % BUCKET_S
        if not self._buckets or self._buckets[-1].start < start:
            self._buckets.append(Bucket(start))
        for bucket in reversed(self._buckets):  # a late finish lands in its own bucket
            if bucket.start <= start:
                return bucket
        return self._buckets[0]

    def _expire(self) -> None:
        now = self._clock()
        while self._minute and self._minute[0].at < now - RATE_WINDOW_S:
            self._minute.popleft()
        while self._buckets and self._buckets[0].start < now - HISTORY_S:
            self._buckets.popleft()


def failed(status: int) -> bool:
    """What the error rate counts: a server-side failure or a refusal to serve (429, 5xx);
    a client's own mistake (4xx) or hang-up (499) is not the fleet failing."""
    return status == 429 or (status >= 500 and status != 499)


def _window(done: list[Finished], span_s: float) -> Window:
    ttfts = sorted(d.ttft_s for d in done if d.ttft_s is not None)
    return Window(
        requests_per_s=len(done) / span_s,
        tokens_per_s=sum(d.tokens for d in done) / span_s,
        error_rate=sum(failed(d.status) for d in done) / len(done) if done else 0.0,
        ttft_p50_s=_quantile(ttfts, 0.5),
        ttft_p95_s=_quantile(ttfts, 0.95),
    )


def _bucket_window(bucket: Bucket, span_s: float) -> Window:
    ttfts = sorted(bucket.ttfts)
    return Window(
        requests_per_s=bucket.requests / span_s,
        tokens_per_s=bucket.tokens / span_s,
        error_rate=bucket.errors / bucket.requests if bucket.requests else 0.0,
        ttft_p50_s=_quantile(ttfts, 0.5),
        ttft_p95_s=_quantile(ttfts, 0.95),
    )


def _quantile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank quantile of sorted values; None for none."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
