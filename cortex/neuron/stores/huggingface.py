"""The Hugging Face hub cache (``huggingface_hub``'s layout), read without huggingface_hub.

    <hub>/models--<org>--<name>/refs/main              the commit "main" is at
    <hub>/models--<org>--<name>/snapshots/<commit>/    config.json, *.safetensors, tokenizer
                                                       files: symlinks into ../../blobs/
    <hub>/models--<org>--<name>/blobs/<sha>            the files' contents

A repository is offered when its snapshot can load: a config.json naming a causal LM
architecture, safetensors weights (every shard its index names) and a tokenizer. The snapshot
is the one ``refs/main`` names, else the newest. Other repositories (embedding models, datasets,
pickled-only weights, half-finished downloads) are skipped without a word: a cache holds many.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from cortex.protocol.neuron import DiscoveredModel

PREFIX = "hf-cache:"
_REPO_DIR = "models--"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_INDEX = "model.safetensors.index.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)?$")


def default_root(env: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps it: $HF_HUB_CACHE, else $HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    if explicit := env.get("HF_HUB_CACHE"):
        return Path(explicit).expanduser()
    if home := env.get("HF_HOME"):
        return Path(home).expanduser() / "hub"
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "huggingface" / "hub"


def models(hub: Path) -> Iterator[DiscoveredModel]:
    """Every loadable repository in the cache at ``hub``, by repository id."""
    try:
        entries = sorted(hub.iterdir())
    except OSError:
        return  # no cache (yet): nothing to offer
    for repo_dir in entries:
        if not repo_dir.name.startswith(_REPO_DIR):
            continue
        repo_id = repo_dir.name.removeprefix(_REPO_DIR).replace("--", "/")
        found = _model(repo_id, repo_dir) if _REPO_ID.match(repo_id) else None
        if found is not None:
            yield found


def snapshot(hub: Path, repo_id: str) -> Path | None:
    """The snapshot directory of ``repo_id`` ("org/name") that loads, or None."""
    if not _REPO_ID.match(repo_id):
        return None
    folder = _latest(hub / (_REPO_DIR + repo_id.replace("/", "--")))
    return folder if folder is not None and _weights(folder) is not None else None


def _model(repo_id: str, repo_dir: Path) -> DiscoveredModel | None:
    folder = _latest(repo_dir)
    weights = _weights(folder) if folder is not None else None
    if folder is None or weights is None:
        return None
    return DiscoveredModel(
        id=repo_id,
        source=PREFIX + repo_id,
        store="huggingface",
        format="safetensors",
        bytes=weights,
        context_length=_context_length(folder),
    )


def _latest(repo_dir: Path) -> Path | None:
    """The snapshot ``refs/main`` names, else the most recently written one."""
    try:
        main = (repo_dir / "refs" / "main").read_text(encoding="utf-8").strip()
        if main and (repo_dir / "snapshots" / main).is_dir():
            return repo_dir / "snapshots" / main
    except (OSError, UnicodeDecodeError):
        pass
    try:
        snapshots = [p for p in (repo_dir / "snapshots").iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(snapshots, key=lambda p: p.stat().st_mtime, default=None)


def _config(folder: Path) -> dict[str, object]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _weights(folder: Path) -> int | None:
    """Bytes of the snapshot's safetensors when it can load as a causal LM, else None."""
    architectures = _config(folder).get("architectures")
    if not isinstance(architectures, list) or not any(
        isinstance(a, str) and a.endswith("ForCausalLM") for a in architectures
    ):
        return None
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return None
    shards = _shards(folder)
    try:
        return sum(os.stat(shard).st_size for shard in shards) if shards else None
    except OSError:
        return None  # a shard the index names is missing (or its blob is): not complete


def _shards(folder: Path) -> list[Path]:
    """The weight files: those the shard index names, else every *.safetensors."""
    try:
        index = json.loads((folder / _INDEX).read_text(encoding="utf-8"))
        names = set(index["weight_map"].values())
        return [folder / name for name in sorted(names) if "/" not in name]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return sorted(folder.glob("*.safetensors"))


def _context_length(folder: Path) -> int:
    config = _config(folder)
    text = config.get("text_config")
    for source in (config, text if isinstance(text, dict) else {}):
        value = source.get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            return value
    return 0
