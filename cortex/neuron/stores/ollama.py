"""Ollama's model store (``~/.ollama/models``, or ``$OLLAMA_MODELS``), read without Ollama.

    manifests/<registry>/<namespace>/<name>/<tag>   a JSON manifest (OCI image style)
    blobs/sha256-<hex>                              its layers, named by digest

Of a manifest's layers, ``application/vnd.ollama.image.model`` is the weights: a GGUF (with its
tokenizer and Jinja chat template inside) stored without a ``.gguf`` suffix, recognised by its
magic bytes. ``...image.params`` is JSON (temperature, top_p, top_k, repeat_penalty become the
model's sampling defaults; stop strings and num_ctx are not read). ``...image.template`` is a Go
template and is not read: the GGUF's own chat template is used. A manifest with a projector
(vision) or adapter (LoRA) layer, or whose weights are missing or not a GGUF, is skipped.

Names are what ``ollama list`` shows: ``llama3.2:1b`` in registry.ollama.ai's ``library``,
``user/name:tag`` in another namespace, ``host/namespace/name:tag`` in another registry.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import msgspec

from cortex.config import NO_SAMPLING_DEFAULTS, SamplingDefaults
from cortex.neuron.sources import is_gguf
from cortex.protocol.neuron import DiscoveredModel

log = logging.getLogger(__name__)

PREFIX = "ollama:"
REGISTRY, NAMESPACE, TAG = "registry.ollama.ai", "library", "latest"
MODEL = "application/vnd.ollama.image.model"
PARAMS = "application/vnd.ollama.image.params"
_REFUSED = ("application/vnd.ollama.image.projector", "application/vnd.ollama.image.adapter")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# Ollama's params key -> cortex's sampling default
_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repeat_penalty": "repetition_penalty",
}


def default_root(env: Mapping[str, str]) -> Path:
    """Where Ollama keeps its models: $OLLAMA_MODELS, else ~/.ollama/models."""
    if explicit := env.get("OLLAMA_MODELS"):
        return Path(explicit).expanduser()
    return Path.home() / ".ollama" / "models"


def models(root: Path) -> Iterator[DiscoveredModel]:
    """Every loadable model in the store at ``root``, by name."""
    manifests = root / "manifests"
    try:
        files = sorted(p for p in manifests.glob("*/*/*/*") if p.is_file())
    except OSError:
        return
    for file in files:
        registry, namespace, name, tag = file.relative_to(manifests).parts
        found = _model(root, _display_name(registry, namespace, name, tag), file)
        if found is not None:
            yield found


def weights(root: Path, name: str) -> Path | None:
    """The GGUF blob of ``name`` (as ``ollama run`` takes it; the tag defaults to latest)."""
    parts = _manifest_parts(name)
    if parts is None:
        return None
    layers = _layers(root / "manifests" / Path(*parts))
    return _weights_blob(root, layers) if layers is not None else None


def _display_name(registry: str, namespace: str, name: str, tag: str) -> str:
    if registry != REGISTRY:
        return f"{registry}/{namespace}/{name}:{tag}"
    return f"{name}:{tag}" if namespace == NAMESPACE else f"{namespace}/{name}:{tag}"


def _manifest_parts(name: str) -> tuple[str, str, str, str] | None:
    """``[host/][namespace/]name[:tag]`` -> (registry, namespace, name, tag); None if invalid."""
    path, _, tag = name.partition(":")
    pieces = path.split("/")
    if len(pieces) > 3:
        return None
    registry = pieces[0] if len(pieces) == 3 else REGISTRY
    namespace = pieces[-2] if len(pieces) >= 2 else NAMESPACE
    parts = (registry, namespace, pieces[-1], tag or TAG)
    return parts if all(_PART.match(p) for p in parts) else None


def _model(root: Path, name: str, manifest: Path) -> DiscoveredModel | None:
    layers = _layers(manifest)
    blob = _weights_blob(root, layers) if layers is not None else None
    if layers is None or blob is None:
        return None
    try:
        size = blob.stat().st_size
    except OSError:
        return None
    return DiscoveredModel(
        id=name,
        source=PREFIX + name,
        store="ollama",
        format="gguf",
        bytes=size,
        sampling=_sampling(root, layers, name),
    )


def _layers(manifest: Path) -> list[dict[str, object]] | None:
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        return None
    if any(layer.get("mediaType") in _REFUSED for layer in layers):
        return None
    return layers


def _blob(root: Path, layers: list[dict[str, object]], media_type: str) -> Path | None:
    """The blob of the one layer of ``media_type`` (None: none, several, or a bad digest)."""
    digests = [layer.get("digest") for layer in layers if layer.get("mediaType") == media_type]
    if len(digests) != 1 or not isinstance(digests[0], str) or not _DIGEST.match(digests[0]):
        return None
    return root / "blobs" / digests[0].replace(":", "-")


def _weights_blob(root: Path, layers: list[dict[str, object]]) -> Path | None:
    blob = _blob(root, layers, MODEL)
    return blob if blob is not None and is_gguf(blob) else None


def _sampling(root: Path, layers: list[dict[str, object]], name: str) -> SamplingDefaults:
    blob = _blob(root, layers, PARAMS)
    if blob is None:
        return NO_SAMPLING_DEFAULTS
    try:
        params = json.loads(blob.read_text(encoding="utf-8"))
        found = {ours: params[theirs] for theirs, ours in _SAMPLING.items() if theirs in params}
        return msgspec.convert(found, SamplingDefaults)
    except (OSError, ValueError, TypeError, msgspec.ValidationError) as exc:
        log.warning("ollama model %s: its params are not used: %s", name, exc)
        return NO_SAMPLING_DEFAULTS
