"""SIGHUP on a neuron: re-read neuron.toml and its models.toml without touching loaded models.

Applied live: the models file's entries (what a ``preload`` id or an admin load by id means)
and ``preload``: ids newly listed are loaded in the background. Everything else in
``[neuron]`` (listen, token, roots, budgets) is fixed until a restart and logged as such when it
changed. An invalid file is logged as ``--check``'s one line and the running config stays.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from cortex import config as cfg
from cortex.errors import ConfigError
from cortex.neuron.node import NODE
from cortex.sighup import reload_on_sighup

log = logging.getLogger("cortex.neuron.reload")


def read(config_path: Path) -> tuple[cfg.NeuronConfig, cfg.ModelsConfig]:
    """Both files, validated as at start-up (raises ConfigError)."""
    config = cfg.load_neuron(config_path)
    models = (
        cfg.load_models(cfg.resolve_relative(config_path, config.neuron.models))
        if config.neuron.models
        else cfg.ModelsConfig()
    )
    return config, models


async def reload(app: web.Application, config_path: Path) -> bool:
    node = app[NODE]
    try:
        config, models = read(config_path)
    except ConfigError as exc:
        log.error("reload refused, the running config stays: %s", exc)
        return False
    if config.neuron != node.config.neuron:
        log.warning("[neuron] changes apply only after a restart; models and preload reloaded")
    node.catalogue = {entry.id: entry for entry in models.models}
    new_preloads = [m for m in config.preload if m not in node.config.preload]
    node.config = cfg.NeuronConfig(neuron=node.config.neuron, preload=config.preload)
    log.info(
        "reloaded %s: %d models; new preloads: %s",
        config_path,
        len(node.catalogue),
        ", ".join(new_preloads) or "none",
    )
    node.start_preloads(new_preloads)
    return True


def on_sighup(config_path: Path) -> Callable[[web.Application], AsyncIterator[None]]:
    """The neuron's SIGHUP cleanup_ctx."""

    async def reload_app(app: web.Application) -> bool:
        return await reload(app, config_path)

    return reload_on_sighup(reload_app)
