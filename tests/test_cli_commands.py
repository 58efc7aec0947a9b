"""Commands from installed distributions (entry point group ``cortex.commands``), and the rule
that the core package imports no harness: ``demo-model`` is the transformers harness's own."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import cortex
from cortex import cli
from tests.e2e.neuron_process import free_port

HARNESS_PACKAGES = ("cortex_transformers", "cortex_echo", "torch", "transformers")


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_cortex_package_imports_no_harness_module() -> None:
    root = Path(cortex.__file__).parent
    offenders = {
        f"{path.relative_to(root.parent)}: {name}"
        for path in root.rglob("*.py")
        for name in _imported_modules(path)
        if name.split(".")[0] in HARNESS_PACKAGES
    }
    assert not offenders, offenders


def test_the_cli_and_make_serve_start_with_the_harness_blocked() -> None:
    """With cortex_transformers unimportable, the CLI still lists and runs its own commands."""
    code = (
        "import sys; sys.modules['cortex_transformers'] = None\n"
        "import cortex.cli, cortex.serve_demo, cortex.gateway.app, cortex.neuron.app\n"
        "cortex.cli.main(['--help'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "status" in done.stdout and "Traceback" not in done.stderr


def _points(monkeypatch: pytest.MonkeyPatch, *points: EntryPoint) -> None:
    monkeypatch.setattr(cli, "_command_points", lambda: points)


def test_a_plugin_command_is_listed_and_run(monkeypatch: pytest.MonkeyPatch) -> None:
    _points(monkeypatch, EntryPoint("hello", "tests.test_cli_commands:hello", cli.COMMANDS_GROUP))
    runner = CliRunner()
    assert "hello" in runner.invoke(cli.main, ["--help"]).output
    result = runner.invoke(cli.main, ["hello", "--name", "cortex"])
    assert (result.exit_code, result.output) == (0, "hello, cortex\n")


def test_a_built_in_command_wins_over_a_plugin_of_the_same_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _points(monkeypatch, EntryPoint("status", "tests.test_cli_commands:hello", cli.COMMANDS_GROUP))
    assert cli.main.get_command(click.Context(cli.main), "status") is not hello


def test_a_broken_plugin_command_says_why_and_the_rest_still_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _points(
        monkeypatch,
        EntryPoint("gone", "no_such_package.commands:gone", cli.COMMANDS_GROUP),
        EntryPoint("odd", "tests.test_cli_commands:HARNESS_PACKAGES", cli.COMMANDS_GROUP),
    )
    runner = CliRunner()
    assert runner.invoke(cli.main, ["--help"]).exit_code == 0
    gone = runner.invoke(cli.main, ["gone"])
    assert gone.exit_code == 1
    assert "command 'gone' (no_such_package.commands:gone) failed to load" in gone.output
    odd = runner.invoke(cli.main, ["odd"])
    assert odd.exit_code == 1 and "is a tuple, not a click command" in odd.output


def test_demo_model_without_the_harness_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _points(monkeypatch)
    result = CliRunner().invoke(cli.main, ["demo-model", "somewhere"])
    assert result.exit_code == 2
    assert "No such command 'demo-model'" in result.output
    assert "pip install ./harnesses/transformers" in result.output


@click.command()
@click.option("--name", default="world")
def hello(name: str) -> None:
    """Say hello (a plugin command for these tests)."""
    click.echo(f"hello, {name}")


def test_a_taken_port_is_one_line_and_exit_status_1_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "models.toml").write_text("")
        (tmp_path / "cortex.toml").write_text(
            f'[gateway]\nlisten = "127.0.0.1:{port}"\nmodels = "models.toml"\n'
            f'metrics_listen = "127.0.0.1:{free_port()}"\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "cortex", "--role", "gateway", "--config", "cortex.toml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("cortex: cannot listen")]
    assert f"'127.0.0.1', {port}" in line and "address already in use" in line
