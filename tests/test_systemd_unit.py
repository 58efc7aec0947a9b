"""`cortex systemd-unit`: the packaged unit, running this installation's own `cortex`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cortex import systemd_unit

CORTEX = [sys.executable, "-m", "cortex"]


def _print_unit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORTEX, "systemd-unit", *args], capture_output=True, text=True, timeout=60, check=False
    )


def _exec_start(unit: str) -> list[str]:
    (line,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=").split()


@pytest.mark.parametrize(
    ("role", "config"),
    [("gateway", "/etc/cortex/cortex.toml"), ("neuron", "/etc/cortex/neuron.toml")],
)
def test_the_unit_runs_this_installations_cortex_on_the_config(role: str, config: str) -> None:
    done = _print_unit(role)
    assert done.returncode == 0, done.stderr
    script, *args = _exec_start(done.stdout)
    assert Path(script).is_absolute() and os.access(script, os.X_OK), script
    assert Path(script).parent == Path(sys.executable).absolute().parent  # the venv's own
    assert args == ["--role", role, "--config", config]
    # Everything else is the packaged unit, line for line.
    packaged = systemd_unit.packaged(role)  # type: ignore[arg-type]
    printed = done.stdout.splitlines()[1:]  # after the "Written by" comment
    assert [a for a in printed if not a.startswith("ExecStart=")] == [
        p for p in packaged.splitlines() if not p.startswith("ExecStart=")
    ]


def test_a_relative_config_is_made_absolute(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CORTEX, "systemd-unit", "neuron", "--config", "conf/neuron.toml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert _exec_start(done.stdout)[-1] == str(tmp_path / "conf/neuron.toml")


def test_a_script_under_a_home_directory_is_warned_about() -> None:
    assert systemd_unit.hidden_by_protect_home(Path("/home/ana/venv/bin/cortex"))
    assert systemd_unit.hidden_by_protect_home(Path("/root/.venv/bin/cortex"))
    assert not systemd_unit.hidden_by_protect_home(Path("/opt/cortex/venv/bin/cortex"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("role", ["gateway", "neuron"])
def test_systemd_analyze_verify_accepts_the_printed_unit(role: str, tmp_path: Path) -> None:
    """In a scratch root with the system's units and stand-ins for the binaries the unit names
    (verify checks that they exist): the venv's path as printed, /usr/bin/kill."""
    unit = systemd_unit.render(
        role,  # type: ignore[arg-type]
        Path("/opt/cortex/venv/bin/cortex"),
        Path("/etc/cortex/x.toml"),
    )
    system_units = next(
        p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()
    )
    shutil.copytree(system_units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    for binary in ("opt/cortex/venv/bin/cortex", "usr/bin/kill"):
        (tmp_path / binary).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / binary).write_text("#!/bin/sh\n")
        (tmp_path / binary).chmod(0o755)
    name = systemd_unit.UNIT_FILE[role]  # type: ignore[index]
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    (tmp_path / "etc/systemd/system" / name).write_text(unit)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={tmp_path}", f"/etc/systemd/system/{name}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
