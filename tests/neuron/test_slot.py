"""Slot state changes go through one table of valid moves."""

from __future__ import annotations

import itertools

import pytest

from cortex.neuron.slot import TRANSITIONS, Slot
from cortex.protocol.neuron import LoadRequest, ModelState

STATES: list[ModelState] = ["loading", "loaded", "unloading", "failed"]


def _slot_in(state: ModelState) -> Slot:
    slot = Slot(LoadRequest(model="m", source="m"), "fake", "cpu", 0, vision=False)
    slot.state = state  # set up directly: the moves themselves are under test
    return slot


@pytest.mark.parametrize(("start", "to"), list(itertools.product(STATES, STATES)))
def test_only_the_table_moves_are_allowed(start: ModelState, to: ModelState) -> None:
    slot = _slot_in(start)
    if to in TRANSITIONS[start]:
        slot.move(to)
        assert slot.state == to
    else:
        with pytest.raises(RuntimeError, match=f"no move from {start} to {to}"):
            slot.move(to)
        assert slot.state == start


def test_loaded_stamps_times_and_clears_progress() -> None:
    slot = _slot_in("loading")
    slot.move("loaded")
    assert slot.loaded_at is not None and slot.last_used == slot.loaded_at
    assert slot.progress is None


def test_failed_keeps_the_reason() -> None:
    slot = _slot_in("loading")
    slot.move("failed", error="out of memory")
    assert (slot.state, slot.error, slot.progress) == ("failed", "out of memory", None)
