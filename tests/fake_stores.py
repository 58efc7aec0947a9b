"""Tiny fakes of the model stores a neuron discovers (cortex/neuron/stores/), laid out as the
programs that own them write them: the Hugging Face hub cache and Ollama's store."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

# A commit id as the hub names snapshots.
REVISION = "0123456789abcdef0123456789abcdef01234567"


def add_hf_snapshot(hub: Path, repo_id: str, files: Path, revision: str = REVISION) -> Path:
    """Put the files of the directory ``files`` into the cache at ``hub`` as ``repo_id``'s
    snapshot at ``revision``: contents in blobs/ by SHA-256, the snapshot's entries relative
    symlinks to them, refs/main naming the revision. Returns the snapshot directory."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in sorted(files.iterdir()):
        if not file.is_file():
            continue
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", digest))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def _blob(root: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def add_ollama_model(
    root: Path,
    name: str,
    gguf: Path,
    *,
    params: dict[str, object] | None = None,
    extra_layers: tuple[str, ...] = (),
) -> Path:
    """Put the GGUF at ``gguf`` into the store at ``root`` as ``name`` ("model:tag" in the
    library namespace, or "user/model:tag"), with a Go template layer, a params layer when
    ``params`` is given and empty layers of the ``extra_layers`` media types. Returns the
    manifest file."""
    media = "application/vnd.ollama.image."
    layers = [{"mediaType": media + "model", **_blob(root, gguf.read_bytes())}]
    template = b"{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    layers.append({"mediaType": media + "template", **_blob(root, template)})
    if params is not None:
        layers.append({"mediaType": media + "params", **_blob(root, json.dumps(params).encode())})
    layers += [{"mediaType": kind, **_blob(root, b"")} for kind in extra_layers]
    config = _blob(root, json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
        "layers": layers,
    }
    path, _, tag = name.partition(":")
    namespace, _, model = path.rpartition("/")
    file = root / "manifests" / "registry.ollama.ai" / (namespace or "library") / model / tag
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(manifest))
    return file
