"""Harness discovery: installed plugins from the ``cortex.harnesses`` entry point group.

Only installed distributions can add a harness; nothing from a request is ever imported. Each
plugin loads in its own try/except, so one broken plugin is logged and skipped and the neuron
still serves the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

from cortex.neuron.harness import Harness

log = logging.getLogger(__name__)

GROUP = "cortex.harnesses"


def discover(allow: Iterable[str] = (), extra: Iterable[type[Harness]] = ()) -> dict[str, Harness]:
    """Instantiate every allowed harness, keyed by its name (an empty ``allow`` allows all).

    ``extra`` classes are added as if installed (tests use it); entry points come first, and a
    later class with an already-taken name is skipped with a warning.
    """
    allowed = frozenset(allow)
    found: dict[str, Harness] = {}
    candidates: list[tuple[str, object]] = []
    for ep in entry_points(group=GROUP):
        if allowed and ep.name not in allowed:
            continue
        try:
            candidates.append((f"entry point {ep.name!r} ({ep.value})", ep.load()))
        except Exception:
            log.exception("harness plugin %r (%s) failed to import; skipped", ep.name, ep.value)
    candidates.extend((f"class {cls.__qualname__}", cls) for cls in extra)
    for origin, obj in candidates:
        harness = _instantiate(origin, obj)
        if harness is None or (allowed and harness.name not in allowed):
            continue
        if harness.name in found:
            log.warning(
                "harness %r from %s duplicates an earlier one; skipped", harness.name, origin
            )
            continue
        found[harness.name] = harness
    log.info("harnesses: %s", ", ".join(sorted(found)) or "none")
    return found


def _instantiate(origin: str, obj: object) -> Harness | None:
    if not (isinstance(obj, type) and issubclass(obj, Harness)):
        log.error("harness %s is not a subclass of cortex.neuron.harness.Harness; skipped", origin)
        return None
    if not isinstance(getattr(obj, "name", None), str):
        log.error("harness %s has no `name`; skipped", origin)
        return None
    try:
        return obj()
    except Exception:
        log.exception("harness %s failed to start; skipped", origin)
        return None
