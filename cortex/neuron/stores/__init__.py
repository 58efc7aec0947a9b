"""Models the user already has: the stores of other programs a neuron offers models from.

neuron.toml opts in per store (``discover = ["huggingface", "ollama"]``, roots overridable with
``huggingface_cache`` and ``ollama_models``). An enabled store does two things:

- ``discovered()``: its models as ``DiscoveredModel`` entries in GET /status, which the gateway
  offers in its catalogue where models.toml does not name them.
- ``locate(source)``: a store source (``hf-cache:org/name``, ``ollama:name:tag``) becomes the
  path of its snapshot directory or GGUF blob; and the store's root joins ``roots``, so that
  path (and any absolute path into the store) passes the same checks as a source under
  ``model_roots`` (sources.py: no ``..``, no symlink escape, safetensors or GGUF only).

Owner: ``ModelManager`` holds one ``Stores``. Scans read the disk on the event loop (a few stat
calls and small JSON files a model) and are kept for ``RESCAN_S``, so a model pulled meanwhile
appears within that long.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cortex.config import NeuronSection, Store
from cortex.errors import InvalidRequest
from cortex.neuron.stores import huggingface, ollama
from cortex.protocol.neuron import DiscoveredModel

log = logging.getLogger(__name__)

RESCAN_S = 10.0


@dataclass(frozen=True)
class _Kind:
    prefix: str
    default_root: Callable[[Mapping[str, str]], Path]
    models: Callable[[Path], Iterator[DiscoveredModel]]
    locate: Callable[[Path, str], Path | None]
    what: str  # for messages: what a source names


KINDS: dict[Store, _Kind] = {
    "huggingface": _Kind(
        huggingface.PREFIX,
        huggingface.default_root,
        huggingface.models,
        huggingface.snapshot,
        "a complete safetensors snapshot of that repository",
    ),
    "ollama": _Kind(
        ollama.PREFIX,
        ollama.default_root,
        ollama.models,
        ollama.weights,
        "a manifest of that name with GGUF weights",
    ),
}


class Stores:
    """The enabled stores of one neuron, each with its root directory."""

    def __init__(
        self, roots: Mapping[Store, Path], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._roots = dict(roots)
        self._clock = clock
        self._scanned_at: float | None = None
        self._found: list[DiscoveredModel] = []

    @classmethod
    def from_config(cls, config: NeuronSection, env: Mapping[str, str] = os.environ) -> Stores:
        overrides: dict[Store, str] = {
            "huggingface": config.huggingface_cache,
            "ollama": config.ollama_models,
        }
        roots = {
            store: Path(overrides[store]).expanduser()
            if overrides[store]
            else KINDS[store].default_root(env)
            for store in config.discover
        }
        for store, root in roots.items():
            log.info("discovering %s models in %s", store, root)
        return cls(roots)

    @property
    def roots(self) -> list[str]:
        """The enabled stores' directories: allowed model roots besides ``model_roots``."""
        return [str(root) for root in self._roots.values()]

    def discovered(self) -> list[DiscoveredModel]:
        """Every loadable model of the enabled stores (rescanned at most every RESCAN_S)."""
        now = self._clock()
        if self._scanned_at is None or now - self._scanned_at >= RESCAN_S:
            self._scanned_at = now
            self._found = [m for s, root in self._roots.items() for m in KINDS[s].models(root)]
        return self._found

    def locate(self, source: str) -> str:
        """``source`` with a store prefix replaced by the model's path in that store; any
        other source unchanged. Raises InvalidRequest: the store is not enabled here, or holds
        no such model."""
        for store, kind in KINDS.items():
            if not source.startswith(kind.prefix):
                continue
            root = self._roots.get(store)
            if root is None:
                raise InvalidRequest(
                    f"model source {source!r}: the {store} store is not discovered on this "
                    f'neuron (neuron.toml: discover = ["{store}"])',
                    param="source",
                )
            found = kind.locate(root, source.removeprefix(kind.prefix))
            if found is None:
                raise InvalidRequest(
                    f"model source {source!r}: {root} holds no {kind.what}", param="source"
                )
            return str(found)
        return source
