"""The recent past behind `cortex status` and the /ui charts: the last minute exactly, 15
minutes of 10-second buckets, the last errors."""

from __future__ import annotations

import pytest

from cortex.gateway.history import BUCKET_S, HISTORY_S, RATE_WINDOW_S, Finished, History


def done(at: float, status: int = 200, ttft: float | None = None, **kw: object) -> Finished:
    fields: dict[str, object] = {"request_id": "r", "model": "m", "node": "n", "tokens": 10}
    fields.update(kw)
    return Finished(at=at, status=status, ttft_s=ttft, error=None, **fields)  # type: ignore[arg-type]


def test_the_last_minute_counts_rates_errors_and_stream_ttfts() -> None:
    now = [1000.0]
    history = History(clock=lambda: now[0])
    for ttft in (0.3, None, 0.1, 0.2, None):
        history.record(done(now[0], ttft=ttft))
    history.record(done(now[0], status=503))
    history.record(done(now[0], status=400))  # the client's mistake, not a failure
    minute = history.last_minute()
    assert minute.requests_per_s == pytest.approx(7 / RATE_WINDOW_S)
    assert minute.tokens_per_s == pytest.approx(70 / RATE_WINDOW_S)
    assert minute.error_rate == pytest.approx(1 / 7)
    assert (minute.ttft_p50_s, minute.ttft_p95_s) == (0.2, 0.3)
    now[0] += RATE_WINDOW_S + 1
    assert history.last_minute().requests_per_s == 0


def test_rates_per_model_and_node() -> None:
    history = History(clock=lambda: 0.0)
    history.record(done(0.0, model="a", node="x", tokens=6))
    history.record(done(0.0, model="b", node="x", tokens=12))
    assert history.by(lambda d: d.model) == {
        "a": (1 / RATE_WINDOW_S, 6 / RATE_WINDOW_S),
        "b": (1 / RATE_WINDOW_S, 12 / RATE_WINDOW_S),
    }
    assert history.by(lambda d: d.node) == {"x": (2 / RATE_WINDOW_S, 18 / RATE_WINDOW_S)}


def test_buckets_keep_fifteen_minutes_with_the_deepest_queue_seen() -> None:
    now = [0.0]
    history = History(clock=lambda: now[0])
    history.record(done(0.0, ttft=0.5))
    history.sample_queue(3)
    history.sample_queue(1)
    now[0] = BUCKET_S * 2 + 1
    history.record(done(now[0]))
    history.record(done(now[0], status=500))
    (first, w1), (second, w2) = history.buckets()
    assert (first.start, first.queue_depth, w1.ttft_p50_s) == (0.0, 3, 0.5)
    assert w1.requests_per_s == pytest.approx(1 / BUCKET_S)
    assert second.start == BUCKET_S * 2 and w2.error_rate == pytest.approx(0.5)
    now[0] = HISTORY_S + BUCKET_S
    assert [b.start for b, _ in history.buckets()] == [BUCKET_S * 2]


def test_recent_errors_are_newest_first_and_bounded() -> None:
    history = History(clock=lambda: 0.0)
    for i in range(30):
        history.record(done(0.0, status=502, request_id=f"r{i}"))
    history.record(done(0.0, status=200, request_id="fine"))
    errors = history.recent_errors()
    assert len(errors) == 20 and errors[0].request_id == "r29"
