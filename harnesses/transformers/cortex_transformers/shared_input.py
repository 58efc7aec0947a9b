"""Sibling linears that read one input, multiplied as one: q/k/v and gate/up under int4/int8.

A decoder layer multiplies the same hidden state by ``q_proj``, ``k_proj`` and ``v_proj``, and
the MLP's input by ``gate_proj`` and ``up_proj``. With quantised weights each product is one
call of a CPU kernel whose fixed cost and poor use of memory bandwidth on narrow matrices
(SmolLM2's 192 x 576 k/v: 2.8 GB/s against 8 GB/s for its 1536 x 576) show at one row a step;
one call over the concatenated weight costs less than the three (bench/results/
2026-12-07-cpu-quantization.md).

Each sibling becomes a ``SiblingPart`` of one ``SharedInput``: the first part called with an
input multiplies it by the concatenated weight and keeps the result; its siblings called with
the same tensor take their slice. Which part comes first does not matter, and a part called
with another tensor recomputes, so correctness never depends on the model's call order; only
the saving does. It does assume the input is not changed in place between its siblings' calls
(Llama- and Qwen-style layers do not). Owned by whoever runs the model (the decode worker): the
kept result is per-model state, not thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class SharedInput(nn.Module):
    """One product for several linears that read the same input."""

    def __init__(self, fused: nn.Module, sizes: list[int]) -> None:
        super().__init__()
        self.fused = fused
        self.sizes = sizes
        self._input: torch.Tensor | None = None
        self._parts: tuple[torch.Tensor, ...] = ()
        self._taken = 0

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Sibling ``index``'s output for ``x``; the kept product is dropped once every
        sibling has taken its slice."""
        if self._input is not x:
            self._input, self._parts, self._taken = x, self.fused(x).split(self.sizes, -1), 0
        out = self._parts[index]
        self._taken += 1
        if self._taken == len(self.sizes):
            self._input, self._parts = None, ()
        return out


class SiblingPart(nn.Module):
    """Stands where one sibling linear stood; its product comes from the ``SharedInput``."""

    def __init__(self, shared: SharedInput, index: int) -> None:
        super().__init__()
        object.__setattr__(self, "_shared", shared)  # registered once, on the parent
        self.index = index
        self.in_features, self.out_features = shared.fused.in_features, shared.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared: SharedInput = self._shared  # type: ignore[assignment]
        return shared.part(x, self.index)


def fuse_siblings(parent: nn.Module, quantise: Callable[[nn.Linear], nn.Module | None]) -> int:
    """Replace each group of ``SIBLINGS`` among ``parent``'s children (all ``nn.Linear`` on
    the CPU, of one input width) by parts of one ``quantise``-d linear over their
    concatenated weights; returns how many linears were replaced. A group ``quantise``
    leaves alone (None) stays as it is."""
    replaced = 0
    for names in SIBLINGS:
        linears = [getattr(parent, name, None) for name in names]
        if not all(isinstance(linear, nn.Linear) for linear in linears):
            continue
        group: list[nn.Linear] = linears  # type: ignore[assignment]
        if len({(g.in_features, g.bias is None, g.weight.device.type) for g in group}) != 1:
            continue
        if group[0].weight.device.type != "cpu":
            continue
        fused = quantise(_concatenated(group))
        if fused is None:
            continue
        shared = SharedInput(fused, [g.out_features for g in group])
        parent.add_module("_".join(n.removesuffix("_proj") for n in names) + "_proj", shared)
        for index, name in enumerate(names):
            setattr(parent, name, SiblingPart(shared, index))
        replaced += len(names)
    return replaced


def _concatenated(group: list[nn.Linear]) -> nn.Linear:
    """One linear whose outputs are the group's, in order."""
    first = group[0]
    weight = torch.cat([linear.weight.detach() for linear in group])
    fused = nn.Linear(first.in_features, weight.shape[0], bias=first.bias is not None)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if first.bias is not None:
        bias = torch.cat([linear.bias.detach() for linear in group])  # type: ignore[union-attr]
        fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused
