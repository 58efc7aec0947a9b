"""The runtime pin file: round trip, atomic replace, and failures that must not stop serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.gateway.pins import PinStore


def test_pins_round_trip_through_the_file(tmp_path: Path) -> None:
    store = PinStore(tmp_path / "state.json")
    assert store.load() == {}
    store.save({"a": True, "b": False})
    assert PinStore(tmp_path / "state.json").load() == {"a": True, "b": False}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind


def test_a_corrupt_file_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state.json").write_text("{not json")
    assert PinStore(tmp_path / "state.json").load() == {}
    assert "ignoring the pin file" in caplog.text


def test_an_unwritable_place_keeps_the_pin_in_memory_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    PinStore(tmp_path / "missing-dir" / "state.json").save({"a": True})
    assert "could not save pins" in caplog.text


def test_no_path_means_memory_only(tmp_path: Path) -> None:
    store = PinStore(None)
    store.save({"a": True})
    assert store.load() == {}
