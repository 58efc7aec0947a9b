"""The ``cortex`` command: boot a gateway or a neuron, talk to a gateway, run harness commands.

Servers: ``cortex --role gateway|neuron --config FILE`` (same as ``cortex serve ...``), with
``--check`` to validate the config and exit 0 or 2 without serving. Fleet commands
(``status``, ``models``, ``load`` ...) live in cli_fleet.py and talk to a gateway's admin API.
Installed harnesses add their own (``demo-model`` comes with the transformers harness) through
the ``cortex.commands`` entry point group: this package imports no harness.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, EntryPoints, entry_points
from pathlib import Path
from typing import Literal

import click

from cortex import __version__, config
from cortex.errors import ConfigError
from cortex.logs import setup_logging

Role = Literal["gateway", "neuron"]
EXIT_CONFIG = 2


def _check_config(role: Role, path: Path) -> config.CortexConfig | config.NeuronConfig:
    """Parse the role's config and everything it points at; exit 2 with one line on error."""
    try:
        if role == "gateway":
            cortex_cfg = config.load_cortex(path)
            config.load_models(config.resolve_relative(path, cortex_cfg.gateway.models))
            config.split_listen(cortex_cfg.gateway.listen)
            config.split_listen(cortex_cfg.gateway.metrics_listen)
            return cortex_cfg
        neuron_cfg = config.load_neuron(path)
        config.split_listen(neuron_cfg.neuron.listen)
        if neuron_cfg.neuron.models:
            models = config.load_models(config.resolve_relative(path, neuron_cfg.neuron.models))
            known = {m.id for m in models.models}
            for model_id in neuron_cfg.preload:
                if model_id not in known:
                    raise ConfigError(
                        f"{path.name}: preload: {model_id!r} is not in {neuron_cfg.neuron.models}"
                    )
        elif neuron_cfg.preload:
            raise ConfigError(f"{path.name}: preload: needs neuron.models (a models.toml)")
        return neuron_cfg
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)


def _serve(role: Role, path: Path, check: bool) -> None:
    cfg = _check_config(role, path)
    if check:
        click.echo(f"{path}: ok")
        return
    options = click.get_current_context().find_root().obj or {}
    section = cfg.gateway if isinstance(cfg, config.CortexConfig) else cfg.neuron
    setup_logging(options.get("log_level", "info"), options.get("log_format") or section.log_format)
    if isinstance(cfg, config.NeuronConfig):
        from cortex.neuron.app import serve as serve_neuron

        serve_neuron(cfg, config_path=path)
    else:
        from cortex.gateway.app import serve as serve_gateway

        serve_gateway(cfg, config_path=path)


_role_option = click.option(
    "--role", type=click.Choice(["gateway", "neuron"]), help="Which server to boot."
)
_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="cortex.toml for a gateway, neuron.toml for a neuron.",
)
_check_option = click.option("--check", is_flag=True, help="Validate the config and exit 0 or 2.")


def _require(role: str | None, config_path: Path | None) -> tuple[Role, Path]:
    if role is None or config_path is None:
        raise click.UsageError("--role and --config are both required to serve")
    return role, config_path  # type: ignore[return-value]


COMMANDS_GROUP = "cortex.commands"
# Where a well-known plugin command comes from, for the hint when it is not installed.
PROVIDED_BY = {
    "demo-model": "the transformers harness: from a checkout, "
    "pip install ./harnesses/transformers (`make install` does it)"
}


class PluginGroup(click.Group):
    """The ``cortex`` group plus the commands installed distributions add through the
    ``cortex.commands`` entry point group (a ``click.Command`` each; the transformers harness
    adds ``demo-model``). A plugin is imported only when its command is named or listed, in its
    own try/except: a broken one becomes a command that says why and exits 1. A built-in name
    wins over a plugin's."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *(ep.name for ep in _command_points())})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        for ep in _command_points():
            if ep.name == cmd_name:
                return _load_command(ep)
        return None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            where = PROVIDED_BY.get(args[0]) if args else None
            if where is None:
                raise
            raise click.UsageError(f"{exc.message} It comes with {where}.", ctx) from None


def _command_points() -> EntryPoints:
    return entry_points(group=COMMANDS_GROUP)


def _load_command(ep: EntryPoint) -> click.Command:
    try:
        command = ep.load()
        if not isinstance(command, click.Command):
            raise TypeError(f"{ep.value} is a {type(command).__name__}, not a click command")
    except Exception as exc:
        reason = f"command {ep.name!r} ({ep.value}) failed to load: {exc}"

        def broken() -> None:
            raise click.ClickException(reason)

        return click.Command(ep.name, callback=broken, help=reason)
    return command


@click.group(
    cls=PluginGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="cortex")
@_role_option
@_config_option
@_check_option
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default=None, help="Overrides config."
)
@click.pass_context
def main(
    ctx: click.Context,
    role: str | None,
    config_path: Path | None,
    check: bool,
    log_level: str,
    log_format: str | None,
) -> None:
    """cortex: one OpenAI/Anthropic endpoint in front of your local-LLM GPU hosts."""
    setup_logging(log_level, log_format or "text")
    ctx.ensure_object(dict)
    ctx.obj["log_format"] = log_format
    ctx.obj["log_level"] = log_level
    if ctx.invoked_subcommand is not None:
        return
    if role is None and config_path is None:
        click.echo(ctx.get_help())
        return
    _serve(*_require(role, config_path), check)


@main.command()
@_role_option
@_config_option
@_check_option
def serve(role: str | None, config_path: Path | None, check: bool) -> None:
    """Boot a gateway or a neuron (same as the top-level --role/--config)."""
    _serve(*_require(role, config_path), check)


@main.command("systemd-unit")
@click.argument("role", type=click.Choice(["gateway", "neuron"]))
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The config file the unit runs on [default: /etc/cortex/cortex.toml or neuron.toml].",
)
def systemd_unit(role: Role, config_path: Path | None) -> None:
    """Print the systemd unit for ROLE, running this installation's own `cortex` (a venv's
    bin/cortex). Install it with: cortex systemd-unit neuron | sudo tee
    /etc/systemd/system/neuron.service"""
    from cortex import systemd_unit as units

    try:
        script = units.cortex_script()
    except units.NoScript as exc:
        raise click.ClickException(str(exc)) from None
    config_file = (config_path or units.DEFAULT_CONFIG[role]).absolute()
    if units.hidden_by_protect_home(script):
        click.echo(
            f"warning: {script} is under a home directory, which the unit's ProtectHome=yes "
            "hides from the service; install the venv under /opt (docs/operations.md)",
            err=True,
        )
    click.echo(units.render(role, script, config_file), nl=False)


def _register_fleet_commands() -> None:
    from cortex.cli_fleet import register

    register(main)


_register_fleet_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
