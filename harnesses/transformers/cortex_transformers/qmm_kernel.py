"""``torch.ops.cortex_quant.qmm``: int4/int8 weights times int8-quantised activations (qmm.cpp).

PyTorch's CPU kernels for packed weights dequantise every weight to a float and want bf16
activations, which CPUs without AVX512-BF16 convert one by one; a 135M model's decode step spent
~9 ms of its ~17 there. llama.cpp instead quantises each activation row to int8 per block of 32
and multiplies in integers (AVX512-VNNI), which is what qmm.cpp does. The cost in quality is one
more rounding of the activations (bench/quantization.py measures it).

The kernel is compiled here on first use with the system's C++ compiler against the installed
torch (a few seconds), cached under ``~/.cache/cortex/kernels`` by a hash of its source and
torch's version, and used only on CPUs with the instructions it needs. Anything missing (no
compiler, an older CPU, a failed build) leaves PyTorch's kernels in charge, with one log line.
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
from torch import nn

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("qmm.cpp")
CHUNK = 64  # weights per chunk: the kernel's unit along K
BLOCK = 32  # weights (and activations) per scale
NEEDED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512vbmi", "f16c")
COMPILE_FLAGS = (
    "-O3", "-std=c++17", "-shared", "-fPIC", "-w",
    "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx512vbmi", "-mf16c", "-mfma",
)  # fmt: skip

# A chunk's byte order: four weights of its first block, four of its second, alternating
# (qmm.cpp's kSource); CHUNK_ORDER[p] is the chunk index of the weight at byte position p.
CHUNK_ORDER = torch.tensor(
    [(lane % 2) * BLOCK + (lane // 2) * 4 + r for lane in range(16) for r in range(4)]
)


def usable(in_features: int) -> bool:
    """Whether a linear of this input width can run on the kernel here."""
    return in_features % CHUNK == 0 and loaded()


_LOADING = threading.Lock()  # two models loading at once: one build, one registration


def loaded() -> bool:
    """Build (once per source and torch version) and load the kernel; False where it cannot
    run, said once in the log."""
    with _LOADING:
        return _load_once()


@functools.cache
def _load_once() -> bool:
    missing = [f for f in NEEDED_FLAGS if f not in cpu_flags()]
    if missing:
        log.info("int8 activation kernel off: this CPU lacks %s", ", ".join(missing))
        return False
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        log.warning("int8 activation kernel off: no C++ compiler (g++) found")
        return False
    try:
        library = _build(compiler)
        torch.ops.load_library(str(library))  # type: ignore[no-untyped-call]
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        log.warning("int8 activation kernel off: %s", _describe(exc))
        return False
    _register_fake()
    return True


def pack(levels: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned levels ``[N, K]`` (0-15 for 4 bits, 0-255 for 8) in the kernel's layout:
    ``[N, K * bits / 8]`` bytes, each chunk of 64 in ``CHUNK_ORDER``; under 4 bits byte j of a
    chunk's 32 holds its level j (low nibble) and j + 32 (high)."""
    n, k = levels.shape
    ordered = levels.reshape(n, k // CHUNK, CHUNK)[..., CHUNK_ORDER].to(torch.uint8)
    if bits == 8:
        return ordered.reshape(n, k).contiguous()
    packed = ordered[..., : CHUNK // 2] | (ordered[..., CHUNK // 2 :] << 4)
    return packed.reshape(n, k // 2).contiguous()


class KernelWeights(nn.Module):
    """One linear's weights in the kernel's layout, ``level * scale + low`` per block of 32,
    with the two products the layout serves: a decode step's (``product``) and the float32
    weight a prefill pass multiplies by (``dequantised``)."""

    weight: torch.Tensor
    scales: torch.Tensor
    lows: torch.Tensor

    def __init__(
        self, levels: torch.Tensor, scales: torch.Tensor, lows: torch.Tensor, bits: int
    ) -> None:
        """levels: unsigned ``[N, K]``; scales, lows: ``[N, K / 32]``, kept as float16."""
        super().__init__()
        self.bits = bits
        self.register_buffer("weight", pack(levels, bits))
        self.register_buffer("scales", scales.half().contiguous())
        self.register_buffer("lows", lows.half().contiguous())

    def product(self, x: torch.Tensor, passes: int = 1) -> torch.Tensor:
        """``x [M, K]`` times the weights: float32 ``[M, N]``, the input rounded to int8 per
        block of 32 in ``passes`` passes (2: ~15 bits, see qmm.cpp's kFiner)."""
        out: torch.Tensor = torch.ops.cortex_quant.qmm(
            x.float().contiguous(), self.weight, self.scales, self.lows, self.bits, passes
        )
        return out

    def dequantised(self) -> torch.Tensor:
        """The float32 weight ``[N, K]``, unpacked in one pass."""
        weight: torch.Tensor = torch.ops.cortex_quant.dequantise(
            self.weight, self.scales, self.lows, self.bits
        )
        return weight


def _build(compiler: str) -> Path:
    key = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cortex" / "kernels"
    library = cache / f"qmm-{key}.so"
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
            str(SOURCE), "-o", partial.name,
            f"-L{root / 'lib'}", f"-Wl,-rpath,{root / 'lib'}", "-ltorch", "-ltorch_cpu", "-lc10",
        ]  # fmt: skip
    log.info("building the int8 activation kernel (once): %s", library)
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
        os.replace(partial.name, library)
    finally:
        Path(partial.name).unlink(missing_ok=True)
    return library


def _register_fake() -> None:
    """The output's shape for tracing (torch.compile): [M, N] float32."""

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
