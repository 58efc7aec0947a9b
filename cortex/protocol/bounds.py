"""Bounds that msgspec's ``Meta`` cannot say: nesting depth of free-form JSON, normal floats.

Called from ``__post_init__`` of wire Structs: ``check_nesting`` raises ``ValueError``, which
msgspec turns into a ValidationError carrying the Struct's path; the top-level checks raise the
ValidationError at their field themselves. Either way the client gets a 400 naming the field.

Why: a 500-level tool schema decodes fine but recurses in the chat template (Jinja's
``tojson``); 5000 levels exceed msgspec's own recursion limit (``protocol.decode`` maps that
RecursionError to a 400 too). A temperature of 1.8e-39 passes ``ge=0`` but is subnormal in
float32 and turns logits into inf/nan, failing the whole batch's decode step.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

FLOAT32_TINY = 1.1754943508222875e-38
"""Smallest normal float32: harnesses sample in float32 (or narrower)."""

MAX_NESTING = 64
"""Deepest free-form JSON (tool schemas, tool inputs) accepted; real schemas stay under 15."""


def check_nesting(value: Any, what: str, limit: int = MAX_NESTING) -> None:
    """Raise ValueError when dicts/lists nest deeper than ``limit`` (iterative: no recursion)."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise ValueError(f"{what} is nested deeper than {limit} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def check_normal(value: float | None, field: str) -> None:
    """Raise a ValidationError at ``$.field`` (a top-level field) for inf, nan and numbers so
    small that a float32 model sees them as subnormal (0.0 itself is fine)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise msgspec.ValidationError(f"expected a finite number - at `$.{field}`")
    if value != 0.0 and abs(value) < FLOAT32_TINY:
        raise msgspec.ValidationError(
            f"expected 0 or a magnitude of at least {FLOAT32_TINY:.4g} - at `$.{field}`"
        )


def check_logit_bias(bias: dict[str, float] | None) -> None:
    """``logit_bias`` keys are token ids (JSON object keys are strings)."""
    for key in bias or ():
        if not key.isdigit():
            refuse("logit_bias", f"logit_bias keys are token ids; got {key!r}")


def refuse(field: str, why: str) -> None:
    """Reject a top-level field the server does not implement, naming it."""
    raise msgspec.ValidationError(f"{why} - at `$.{field}`")
