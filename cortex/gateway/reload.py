"""SIGHUP: re-read cortex.toml and models.toml and apply them without dropping a request.

Applied live: neurons and upstreams (added, removed, changed endpoint or token), the model
catalogue (new, changed and removed models, aliases, pins, TTLs; a removed model's resident
copies are unloaded once their requests drain), eviction settings, timeouts and the key lists
(read per request). Fixed until a restart, and logged as such when they change:
``RESTART_ONLY``. An invalid file is logged as the same one line ``--check`` prints and the
running config stays.

Both files become one new ``Settings``, assigned to the gateway's one ``Live`` reference: the
gateway, the loader, the fleet and the catalogue read it per use, so none keeps the old one.
Runtime pins and client TTLs are the catalogue's and outlive a reload.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from cortex import config as cfg
from cortex.errors import ConfigError
from cortex.gateway.core import GATEWAY, Gateway
from cortex.gateway.settings import Settings
from cortex.sighup import reload_on_sighup

log = logging.getLogger("cortex.gateway.reload")

# Read once when the server starts: the listeners, aiohttp's body limit and keep-alive, the
# pin file's path, the log format.
RESTART_ONLY = (
    "listen",
    "metrics_listen",
    "max_body_mb",
    "keepalive_timeout_s",
    "state_file",
    "log_format",
)


async def reload(gateway: Gateway, config_path: Path) -> bool:
    """Re-read both files and apply them; False (old config kept) when either is invalid."""
    try:
        config = cfg.load_cortex(config_path)
        models = cfg.load_models(cfg.resolve_relative(config_path, config.gateway.models))
    except ConfigError as exc:
        log.error("reload refused, the running config stays: %s", exc)
        return False
    fixed = [
        key
        for key in RESTART_ONLY
        if getattr(config.gateway, key) != getattr(gateway.config.gateway, key)
    ]
    before = set(gateway.catalogue.view().by_id)
    gateway.live.settings = Settings(config, models.models, int(time.time()))  # the one swap
    changes = await gateway.fleet.reconfigure()
    removed = before - set(gateway.catalogue.view().by_id)  # a model still discovered stays
    for node in gateway.fleet.view().nodes:
        for copy in node.models:
            if copy.model_id in removed and copy.state == "loaded":
                # The neuron drains its requests in flight before it frees the memory.
                changes.append(f"{copy.model_id} unloaded from {node.name}")
                gateway.loader.spawn(gateway.loader.unload(copy.model_id, node.name))
    gateway.loader.ensure_pinned()
    log.info(
        "reloaded %s: %d models; %s",
        config_path,
        len(models.models),
        ", ".join(changes) or "no neuron or upstream changes",
    )
    if fixed:
        log.warning("changed keys that apply only after a restart: %s", ", ".join(fixed))
    return True


def on_sighup(config_path: Path) -> Callable[[web.Application], AsyncIterator[None]]:
    """The gateway's SIGHUP cleanup_ctx."""

    async def reload_app(app: web.Application) -> bool:
        return await reload(app[GATEWAY], config_path)

    return reload_on_sighup(reload_app)
