"""Which waiting sequences prefill first in an iteration: short ones beside a long prefill.

First come, first served alone lets one long prompt hold every later arrival: Claude Code's
first turn is ~50k tokens, tens of seconds of prefill on a small GPU (minutes on a CPU), and a
later turn of another session (a few hundred new tokens over its cached prefix), a title or
quota request, or a sub-agent's short prompt would wait all of it before its first token.

So when the waiting prefills do not all fit in one iteration's budget, the sequences with less
left to compute than the one at the head of the queue (the oldest, usually the long prompt in
progress) form an *express* lane: smallest first, in at most half the budget, chunked over
iterations if need be. The head and everything else keep arrival order in the other half, so a
stream of short arrivals slows a long prefill (at most 2x) but never starves it. When everything
fits, arrival order stands: every first token leaves in the same iteration anyway, and short
prompts keep sharing forward passes. Pure, tested without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

EXPRESS_SHARE = 2
"""The express lane takes at most 1/EXPRESS_SHARE of an iteration's prefill budget."""


def prefill_order(remaining: Sequence[int], budget: int) -> tuple[list[int], int]:
    """Order waiting sequences, given in queue order by the prefill tokens each still has to
    compute, for an iteration with ``budget`` tokens. Returns the indices in the order to
    prefill and how many of the first ones form the express lane."""
    if sum(remaining) + len(remaining) <= budget:  # every chunk and its first decode token
        return list(range(len(remaining))), 0
    head = remaining[0]
    express = sorted(
        (i for i in range(1, len(remaining)) if remaining[i] < head), key=remaining.__getitem__
    )
    chosen = set(express)
    return express + [i for i in range(len(remaining)) if i not in chosen], len(express)


def express_budget(budget: int) -> int:
    """Prefill tokens the express lane may take of an iteration's ``budget``."""
    return budget // EXPRESS_SHARE
