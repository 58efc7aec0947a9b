"""Runtime pins (``cortex pin`` / ``unpin``) that survive a gateway restart.

A small JSON file (``{"pins": {"model-id": true|false}}``) next to cortex.toml by default,
replaced atomically (write a temporary file, fsync, rename), so a crash mid-write leaves the
old file, never half of one. An override for a model no longer in the catalogue is harmless
and kept: the model may come back in a later reload.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import msgspec

log = logging.getLogger("cortex.gateway.pins")


class PinFile(msgspec.Struct):
    pins: dict[str, bool] = msgspec.field(default_factory=dict)


class PinStore:
    """Reads and writes the pin file; ``path`` None keeps pins in memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> dict[str, bool]:
        """The saved overrides; {} when there is no file or it cannot be read (logged)."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=PinFile).pins
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("ignoring the pin file %s: %s", self.path, exc)
            return {}

    def save(self, pins: Mapping[str, bool]) -> None:
        """Replace the file; a failure is logged (the pin still holds until a restart)."""
        if self.path is None:
            return
        data = msgspec.json.encode(PinFile(pins=dict(pins)))
        try:
            fd, tmp = tempfile.mkstemp(prefix=".pins-", dir=self.path.parent)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not save pins to %s (they hold until a restart): %s", self.path, exc)
