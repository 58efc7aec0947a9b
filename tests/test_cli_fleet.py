"""Fleet CLI behaviour that needs no gateway: watching through an outage."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cortex import cli_fleet
from tests.e2e.neuron_process import free_port


class _Stop(Exception):
    pass


def test_status_watch_keeps_polling_an_unreachable_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise _Stop

    monkeypatch.setattr(cli_fleet.time, "sleep", fake_sleep)
    dead = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        cli_fleet.status, ["--gateway", dead, "--watch", "--interval", "0.5"]
    )
    assert isinstance(result.exception, _Stop), result.output
    assert result.output.count("unreachable: cannot reach the gateway") == 3
    assert sleeps == [0.5, 0.5, 0.5]


def test_status_without_watch_fails_once_with_the_reason() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli_fleet.status, ["--gateway", dead])
    assert result.exit_code == 1
    assert "cannot reach the gateway" in result.output
