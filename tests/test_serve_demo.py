"""`make serve`'s launcher: what it says before it starts anything."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortex import serve_demo


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_a_taken_port_is_named_with_its_setting(busy_port: int) -> None:
    line = serve_demo._taken({"CORTEX_PORT": busy_port})
    assert line is not None
    assert f"port {busy_port} is taken" in line and "CORTEX_PORT=PORT" in line


def test_second_make_serve_says_which_port_in_one_line(busy_port: int) -> None:
    env = {**os.environ, "CORTEX_PORT": str(busy_port)}
    done = subprocess.run(
        [sys.executable, "-m", "cortex.serve_demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"port {busy_port} is taken (is another `make serve` running?); "
        "stop it or choose another with CORTEX_PORT=PORT"
    ]
    assert "cortex is serving" not in done.stdout


def test_banner_names_the_venv_script_when_cortex_is_not_on_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serve_demo.shutil, "which", lambda _: None)
    command = serve_demo._cortex_command()
    script = Path(sys.executable).parent / "cortex"
    assert command != "cortex"
    assert Path(command).resolve() == script.resolve()


def test_the_smollm2_entry_samples_as_its_model_card_does(tmp_path: Path) -> None:
    from cortex import config, starter

    toml = serve_demo._models_toml(
        starter.MODEL_ID, starter.SOURCE, "", serve_demo.SMOLLM2_SAMPLING
    )
    (tmp_path / "models.toml").write_text(toml)
    (entry,) = config.load_models(tmp_path / "models.toml").models
    assert entry.sampling == config.SamplingDefaults(temperature=0.2, top_p=0.9)
