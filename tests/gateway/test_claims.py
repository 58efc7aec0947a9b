"""The fleet's request counts have one owner: claims, released exactly once."""

from __future__ import annotations

from typing import Any

from cortex.config import CortexConfig
from cortex.gateway.fleet import Fleet


def _fleet() -> Fleet:
    session: Any = None  # counting never touches the network
    return Fleet(CortexConfig(), {}, session)


def test_release_is_idempotent_and_stamps_last_used() -> None:
    fleet = _fleet()
    claim = fleet.claim("m", "n1", "in_flight")
    assert fleet.counts("m", "n1").in_flight == 1
    claim.release()
    claim.release()  # a retry path and finish() may both release
    usage = fleet.counts("m", "n1")
    assert usage.in_flight == 0
    assert usage.last_used is not None


def test_in_flight_and_queued_are_counted_apart() -> None:
    fleet = _fleet()
    running = [fleet.claim("m", "n1", "in_flight") for _ in range(3)]
    waiting = fleet.claim("m", "n1", "queued")
    usage = fleet.counts("m", "n1")
    assert (usage.in_flight, usage.queued) == (3, 1)
    for claim in running:
        claim.release()
    waiting.release()
    assert (usage.in_flight, usage.queued) == (0, 0)
