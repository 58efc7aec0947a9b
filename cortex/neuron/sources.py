"""Where a load request's ``source`` may point: inside ``model_roots`` and nowhere else.

A relative name is looked up in each root in order; an absolute path must already be inside a
root. Both are resolved (symlinks followed, ``..`` collapsed) before the containment check, so
neither ``..`` nor a symlink can escape. ``hf:org/name`` is a hub id, allowed only when the
neuron allows hub downloads. A local directory must hold ``*.safetensors`` weights: pickled
checkpoints can run code when loaded and are never accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cortex.errors import InvalidRequest

HUB_PREFIX = "hf:"


def resolve_source(source: str, roots: Sequence[str], *, allow_hub_download: bool) -> str:
    """A resolved local directory, or a bare hub id (``org/name``). Raises InvalidRequest."""
    if source.startswith(HUB_PREFIX):
        return _hub_id(source[len(HUB_PREFIX) :], allow_hub_download)
    path = _inside_roots(source, [Path(r).resolve() for r in roots])
    if not any(path.glob("*.safetensors")):
        raise InvalidRequest(
            f"model source {source!r} has no *.safetensors weights (other formats are refused)",
            param="source",
        )
    return str(path)


def _hub_id(repo: str, allowed: bool) -> str:
    if not allowed:
        raise InvalidRequest(
            "hub downloads are disabled on this neuron (allow_hub_download = false)",
            param="source",
            code="hub_download_disabled",
        )
    org, _, name = repo.partition("/")
    if not (org and name) or "/" in name or ".." in repo or repo.startswith("."):
        raise InvalidRequest(f"hub source must be 'hf:org/name', got 'hf:{repo}'", param="source")
    return repo


def _inside_roots(source: str, roots: list[Path]) -> Path:
    given = Path(source)
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    for candidate in candidates:
        resolved = candidate.resolve()
        if not any(resolved.is_relative_to(root) for root in roots):
            continue
        if resolved.is_dir():
            return resolved
    raise InvalidRequest(
        f"model source {source!r} is not a directory inside the neuron's model_roots",
        param="source",
    )
