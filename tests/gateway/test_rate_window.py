"""The last-minute rates behind `cortex status` and the /ui dashboard."""

from __future__ import annotations

import pytest

from cortex.gateway import core
from cortex.gateway.core import RateWindow


def test_ttft_median_ignores_requests_without_a_first_token() -> None:
    window = RateWindow()
    for ttft in (0.3, None, 0.1, 0.2, None):
        window.add(10, ttft)
    assert window.ttft_p50() == pytest.approx(0.2)
    requests_per_s, tokens_per_s = window.rates()
    assert requests_per_s == pytest.approx(5 / core.RATE_WINDOW_S)
    assert tokens_per_s == pytest.approx(50 / core.RATE_WINDOW_S)


def test_events_older_than_the_window_drop_out(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(core.time, "monotonic", lambda: now[0])
    window = RateWindow()
    window.add(5, 0.5)
    now[0] += core.RATE_WINDOW_S + 1
    window.add(7, None)
    assert window.ttft_p50() is None
    assert window.rates()[1] == pytest.approx(7 / core.RATE_WINDOW_S)
