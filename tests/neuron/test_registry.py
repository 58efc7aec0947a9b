from __future__ import annotations

import logging
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from cortex.neuron import registry
from tests.neuron.fakes import FakeHarness


class OtherHarness(FakeHarness):
    name = "other"


class NotAHarness:
    name = "imposter"


class Broken(EntryPoint):
    def load(self) -> Any:
        raise ImportError("missing dependency torch")


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> list[EntryPoint]:
    """The entry points ``discover`` sees, instead of the installed distributions."""
    points: list[EntryPoint] = []
    monkeypatch.setattr(registry, "entry_points", lambda group: points)
    return points


def test_entry_points_and_extra_classes_are_instantiated(installed: list[EntryPoint]) -> None:
    installed.append(EntryPoint("fake", "tests.neuron.fakes:FakeHarness", registry.GROUP))
    found = registry.discover(extra=[OtherHarness])
    assert sorted(found) == ["fake", "other"]
    assert isinstance(found["fake"], FakeHarness)


def test_broken_plugin_is_logged_and_skipped(
    installed: list[EntryPoint], caplog: pytest.LogCaptureFixture
) -> None:
    installed.append(Broken("broken", "nowhere:Nothing", registry.GROUP))
    with caplog.at_level(logging.ERROR):
        found = registry.discover(extra=[FakeHarness])
    assert list(found) == ["fake"]
    assert "'broken'" in caplog.text and "skipped" in caplog.text


def test_non_subclass_is_rejected(installed: list[EntryPoint]) -> None:
    installed.append(
        EntryPoint("imposter", "tests.neuron.test_registry:NotAHarness", registry.GROUP)
    )
    assert registry.discover() == {}


def test_allow_list_filters_by_name(installed: list[EntryPoint]) -> None:
    installed.append(EntryPoint("fake", "tests.neuron.fakes:FakeHarness", registry.GROUP))
    assert list(registry.discover(["other"], extra=[OtherHarness])) == ["other"]


def test_empty_allow_list_allows_all(installed: list[EntryPoint]) -> None:
    assert sorted(registry.discover((), extra=[FakeHarness, OtherHarness])) == ["fake", "other"]


def test_duplicate_name_keeps_the_first(installed: list[EntryPoint]) -> None:
    installed.append(EntryPoint("fake", "tests.neuron.fakes:FakeHarness", registry.GROUP))

    class Shadow(FakeHarness):
        pass

    assert type(registry.discover(extra=[Shadow])["fake"]) is FakeHarness
