"""`make serve`'s launcher: what it says before it starts anything."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortex import serve_demo, starter


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


def test_readme_shows_the_banner_make_serve_prints() -> None:
    served = serve_demo.Served(
        starter.MODEL_ID, "SmolLM2-135M-Instruct (small: quick, not clever)", [], ""
    )
    shown = serve_demo.banner(
        served, "http://127.0.0.1:31313", "http://127.0.0.1:31314", ".venv/bin/cortex"
    )
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert shown.strip() in readme


def test_given_model_path_is_served_from_its_parent(tmp_path: Path) -> None:
    gguf = tmp_path / "My-Model.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    served = serve_demo._given(gguf)
    assert served.model_id == "my-model.q4_k_m"
    assert served.roots == [tmp_path.resolve()]
    assert 'source = "My-Model.Q4_K_M.gguf"' in served.models_toml


def test_the_written_configs_check_and_the_neuron_preloads_the_served_model(
    tmp_path: Path,
) -> None:
    """The neuron loads the model itself from the same models.toml (no wait for the gateway's
    first poll); both files pass ``cortex --check``."""
    from cortex import config

    served = serve_demo._given(_fake_gguf(tmp_path))
    for name, text in serve_demo._configs(served, 31313, 31314, 13131).items():
        (tmp_path / name).write_text(text)
    neuron = config.load_neuron(tmp_path / "neuron.toml")
    assert tuple(neuron.preload) == (served.model_id,)
    for role, name in (("neuron", "neuron.toml"), ("gateway", "cortex.toml")):
        command = [sys.executable, "-m", "cortex", "--role", role, "--config", str(tmp_path / name)]
        done = subprocess.run(
            [*command, "--check"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def _fake_gguf(directory: Path) -> Path:
    gguf = directory / "models" / "Tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    return gguf
