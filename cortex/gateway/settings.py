"""The running configuration: cortex.toml and models.toml as one frozen ``Settings``, held by
one ``Live`` reference that ``Gateway``, ``Loader``, ``Fleet`` and ``Catalogue`` share.

Components read ``live.settings`` (or ``live.config``) when they act and never keep a copy, so a
SIGHUP reload, which assigns ``live.settings`` once, reaches every one of them at the same
moment. Values derived from the config (the upstream timeouts, models by id) are computed here,
once per read of the files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from cortex.config import CortexConfig, ModelEntry

__all__ = ["Live", "Settings"]


@dataclass(frozen=True)
class Settings:
    """What the two files said. ``read_at`` (Unix seconds): when models.toml was read, the
    ``created`` of model cards that have no load time (SDKs show it as a date; 0 reads as
    1970)."""

    config: CortexConfig
    models: tuple[ModelEntry, ...] = ()
    read_at: int = 0
    by_id: Mapping[str, ModelEntry] = field(init=False, repr=False, compare=False)
    # Upstream timeouts. Non-stream: the first byte is the whole answer. Streams: neurons send
    # the role chunk before prefill, so every later read may wait at most idle_timeout_s
    # (enforced by aiohttp per read, with no timer of ours per chunk).
    timeout: aiohttp.ClientTimeout = field(init=False, repr=False, compare=False)
    stream_timeout: aiohttp.ClientTimeout = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        gw = self.config.gateway
        derived = {
            "models": tuple(self.models),
            "read_at": int(self.read_at),
            "by_id": {m.id: m for m in self.models},
            "timeout": aiohttp.ClientTimeout(
                total=None, connect=gw.connect_timeout_s, sock_read=gw.first_byte_timeout_s
            ),
            "stream_timeout": aiohttp.ClientTimeout(
                total=None, connect=gw.connect_timeout_s, sock_read=gw.idle_timeout_s
            ),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)


class Live:
    """The one reference to the running ``Settings``. Written only when built (``make_app``)
    and by ``reload.reload``, which replaces it whole; everyone else reads it per use."""

    __slots__ = ("settings",)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def of(
        cls, config: CortexConfig, models: Sequence[ModelEntry] = (), read_at: float = 0
    ) -> Live:
        return cls(Settings(config, tuple(models), int(read_at)))

    @property
    def config(self) -> CortexConfig:
        return self.settings.config
