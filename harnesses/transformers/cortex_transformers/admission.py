"""Which waiting sequences prefill first in an iteration: short ones ahead of a long prefill.

First come, first served alone lets one long prompt hold every later arrival: Claude Code's
first turn is ~50k tokens, tens of seconds of prefill on a small GPU (minutes on a CPU), and a
later turn of another session (a few hundred new tokens over its cached prefix), a title or
quota request, or a sub-agent's short prompt would wait all of it before its first token.

So the sequences with the least prefill still to compute go first, smallest first, while they
fit in the *express* share of the budget (half of it); they keep arrival order among themselves,
and every other sequence keeps arrival order behind them. The long prefill still gets at least
the other half of every iteration's budget, so a stream of short arrivals slows it (at most 2x)
but never starves it. Pure, tested without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

EXPRESS_SHARE = 2
"""The express lane takes at most 1/EXPRESS_SHARE of an iteration's prefill budget."""


def prefill_order(remaining: Sequence[int], budget: int) -> tuple[list[int], int]:
    """Order waiting sequences (given in arrival order by the prefill tokens each still has to
    compute) for one iteration with ``budget`` prefill tokens. Returns the indices in the order
    to prefill and how many of the first ones took the express lane."""
    lane = budget // EXPRESS_SHARE
    chosen: set[int] = set()
    for index in sorted(range(len(remaining)), key=remaining.__getitem__):
        if remaining[index] >= lane:  # its chunk and its first decode token must fit
            break
        chosen.add(index)
        lane -= remaining[index] + 1
    express = [i for i in range(len(remaining)) if i in chosen]
    return express + [i for i in range(len(remaining)) if i not in chosen], len(express)
