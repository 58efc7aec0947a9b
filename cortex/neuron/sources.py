"""Where a load request's ``source`` may point: inside ``model_roots`` and nowhere else.

A relative name is looked up in each root in order; an absolute path must already be inside a
root. Both are resolved (symlinks followed, ``..`` collapsed) before the containment check, so
neither ``..`` nor a symlink can escape. ``hf:org/name`` is a hub id, allowed only when the
neuron allows hub downloads. A local source is a directory holding ``*.safetensors`` weights or
one GGUF file (llama.cpp / Ollama weights, with tokenizer and chat template inside; known by its
magic bytes, as Ollama's blobs have no ``.gguf`` suffix): pickled checkpoints can run code when
loaded and are never accepted. Sources in other programs' stores (``ollama:``, ``hf-cache:``)
are turned into such paths first (stores/), and the stores' roots join ``model_roots``. Every
file of a directory must resolve inside the roots too, so a weight file symlinked in from
elsewhere is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cortex.errors import InvalidRequest

HUB_PREFIX = "hf:"
GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"


def is_gguf(path: Path) -> bool:
    """A file that starts with GGUF's magic bytes (whatever its name)."""
    try:
        with path.open("rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def resolve_source(source: str, roots: Sequence[str], *, allow_hub_download: bool) -> str:
    """A resolved local directory or ``.gguf`` file, or a bare hub id (``org/name``).
    Raises InvalidRequest."""
    if source.startswith(HUB_PREFIX):
        return _hub_id(source[len(HUB_PREFIX) :], allow_hub_download)
    resolved_roots = [Path(r).resolve() for r in roots]
    path = _inside_roots(source, resolved_roots)
    if path.is_file():
        return str(path)
    for entry in path.iterdir():
        if _escapes(entry, resolved_roots):
            raise InvalidRequest(
                f"model source {source!r}: {entry.name} links outside the neuron's model_roots",
                param="source",
            )
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
        try:
            resolved = candidate.resolve()
            if not _within(resolved, roots):
                continue
            if resolved.is_dir() or (
                resolved.is_file() and (resolved.suffix == GGUF_SUFFIX or is_gguf(resolved))
            ):
                return resolved
        except (OSError, RuntimeError, ValueError):
            continue  # name too long, symlink loop (RuntimeError before 3.13), NUL byte
    raise InvalidRequest(
        f"model source {source!r} is not a directory or GGUF file inside the neuron's model_roots",
        param="source",
    )


def _within(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _escapes(entry: Path, roots: list[Path]) -> bool:
    """True when ``entry`` resolves outside the roots (or cannot be resolved: a link loop)."""
    try:
        return not _within(entry.resolve(), roots)
    except (OSError, RuntimeError):
        return True
