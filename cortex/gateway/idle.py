"""Idle TTL: which resident copies have sat unused longer than their model allows. Pure.

A model's TTL is its models.toml ``ttl_s``, else ``[eviction] default_ttl_s``; 0 means never.
Only copies that eviction could also take are candidates: loaded, not pinned (runtime pins
included), nothing in flight or queued. Idle time counts from the last request, or from the
load when it never served one, so a model loaded and never used goes too.
"""

from __future__ import annotations

from collections.abc import Mapping

from cortex.config import ModelEntry
from cortex.gateway.snapshot import FleetView, Resident


def ttl_of(entry: ModelEntry | None, default_ttl_s: float) -> float:
    """Seconds of idleness before unloading; 0 = never (and for models not in the catalogue)."""
    if entry is None:
        return 0.0
    return entry.ttl_s if entry.ttl_s is not None else default_ttl_s


def ttl_left(copy: Resident, ttl_s: float, now: float) -> float | None:
    """Seconds until ``copy`` expires, None when it cannot expire now (no TTL, pinned, busy)."""
    if ttl_s <= 0 or copy.state != "loaded" or copy.pinned or copy.busy:
        return None
    return max(0.0, ttl_s - (now - copy.recency))


def expired(
    view: FleetView, catalogue: Mapping[str, ModelEntry], default_ttl_s: float, now: float
) -> list[Resident]:
    """Copies on live nodes whose TTL ran out, in a stable order (node, then model)."""
    out = []
    for node in view.nodes:
        if node.health != "up":
            continue  # a suspect node's counts are stale: decide on the next good poll
        for copy in node.models:
            left = ttl_left(copy, ttl_of(catalogue.get(copy.model_id), default_ttl_s), now)
            if left == 0.0:
                out.append(copy)
    return out
