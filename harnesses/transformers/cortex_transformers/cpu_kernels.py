"""cortex's own CPU kernels (C++), built on first use and loaded as torch ops.

- ``torch.ops.cortex_quant.qmm`` / ``dequantise`` (qmm.cpp, layout in qmm_kernel.py): int4/int8
  weights times activations rounded to int8 per block of 32, as llama.cpp does.
- ``torch.ops.cortex_attention.paged_decode`` (paged_decode.cpp, used by attention.py): a
  decode step's attention read in place from the KV pool instead of a gathered copy.

The library is compiled here with the system's C++ compiler against the installed torch (~10-20
s, once), cached under ``~/.cache/cortex/kernels`` by a hash of its sources and torch's version,
and used only on CPUs with the instructions it needs (AVX-512 with VNNI and VBMI). Anything
missing (no compiler, an older CPU, a failed build) leaves PyTorch's own kernels in charge, with
one log line. Each op has a fake (shape-only) kernel, so it traces into a compiled graph.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(name) for name in ("qmm.cpp", "paged_decode.cpp"))
NEEDED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512vbmi", "f16c")
COMPILE_FLAGS = (
    "-O3", "-std=c++17", "-shared", "-fPIC", "-w",
    "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx512vbmi", "-mf16c", "-mfma",
)  # fmt: skip

_LOADING = threading.Lock()  # two models loading at once: one build, one registration


def loaded() -> bool:
    """Build (once per source and torch version) and load the kernels; False where they
    cannot run, said once in the log."""
    with _LOADING:
        return _load_once()


@functools.cache
def _load_once() -> bool:
    missing = [f for f in NEEDED_FLAGS if f not in cpu_flags()]
    if missing:
        log.info("cortex's CPU kernels off: this CPU lacks %s", ", ".join(missing))
        return False
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        log.warning("cortex's CPU kernels off: no C++ compiler (g++) found")
        return False
    try:
        library = _build(compiler)
        torch.ops.load_library(str(library))  # type: ignore[no-untyped-call]
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        log.warning("cortex's CPU kernels off: %s", _describe(exc))
        return False
    _register_fakes()
    return True


def _build(compiler: str) -> Path:
    digest = hashlib.sha256(torch.__version__.encode())
    for source in SOURCES:
        digest.update(source.read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cortex" / "kernels"
    library = cache / f"cortex-{digest.hexdigest()[:16]}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    root = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    # Built beside its final name and renamed into place: parallel builds (test workers) each
    # write their own file, and the one that lands is whole.
    with tempfile.NamedTemporaryFile(dir=cache, suffix=".so", delete=False) as partial:
        command = [
            compiler, *COMPILE_FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            f"-I{root / 'include'}", f"-I{root / 'include/torch/csrc/api/include'}",
            f"-I{sysconfig.get_paths()['include']}",
            *map(str, SOURCES), "-o", partial.name,
            f"-L{root / 'lib'}", f"-Wl,-rpath,{root / 'lib'}", "-ltorch", "-ltorch_cpu", "-lc10",
        ]  # fmt: skip
    log.info("building cortex's CPU kernels (once): %s", library)
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
        os.replace(partial.name, library)
    finally:
        Path(partial.name).unlink(missing_ok=True)
    return library


def _register_fakes() -> None:
    """Each op's output shape, for tracing (torch.compile)."""

    @torch.library.register_fake("cortex_quant::qmm")  # type: ignore[untyped-decorator]
    def _(
        x: torch.Tensor,
        weight: torch.Tensor,
        scales: torch.Tensor,
        lows: torch.Tensor,
        bits: int,
        passes: int = 1,
    ) -> torch.Tensor:
        return x.new_empty((x.shape[0], weight.shape[0]))

    @torch.library.register_fake("cortex_quant::dequantise")  # type: ignore[untyped-decorator]
    def _(
        weight: torch.Tensor, scales: torch.Tensor, lows: torch.Tensor, bits: int
    ) -> torch.Tensor:
        return weight.new_empty((weight.shape[0], weight.shape[1] * 8 // bits), dtype=torch.float)

    @torch.library.register_fake("cortex_attention::paged_decode")  # type: ignore[untyped-decorator]
    def _(
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        slots: torch.Tensor,
        mask: torch.Tensor | None,
        scale: float,
    ) -> torch.Tensor:
        return query.new_empty(query.shape)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty off Linux)."""
    if sys.platform != "linux":
        return set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        return f"the build failed: {(exc.stderr or '').strip()[-500:]}"
    return f"{type(exc).__name__}: {exc}"
