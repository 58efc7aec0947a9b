"""Neuron throughput against ``transformers serve --continuous-batching``, side by side, one run.

Both serve the same demo model directory on loopback; the same greedy requests go to each:
``--concurrency`` requests of ``--tokens`` max tokens at once (aggregate tok/s, counted from the
usage each server returns), then the same requests one at a time (sequential tok/s).

    .venv/bin/python bench/neuron_throughput.py --size tiny
    .venv/bin/python bench/neuron_throughput.py --size small --rounds 1

Needs ``transformers[serving]`` for the peer (skipped with a note when it is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

PROMPTS = [f"Tell me story number {i} about a fox." for i in range(64)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{url}: server exited")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status < 500:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


async def _one(
    session: aiohttp.ClientSession, url: str, model: str, prompt: str, tokens: int
) -> int:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    async with session.post(url, json=body) as resp:
        data = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {data}")
        return int(data["usage"]["completion_tokens"])


async def _measure(url: str, model: str, concurrency: int, tokens: int) -> dict[str, float]:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await _one(session, url, model, "warm up", 8)
        started = time.perf_counter()
        counts = await asyncio.gather(
            *(_one(session, url, model, PROMPTS[i], tokens) for i in range(concurrency))
        )
        concurrent_s = time.perf_counter() - started
        started = time.perf_counter()
        sequential = [
            await _one(session, url, model, PROMPTS[i], tokens) for i in range(concurrency)
        ]
        sequential_s = time.perf_counter() - started
    return {
        "concurrent_s": concurrent_s,
        "concurrent_tok_s": sum(counts) / concurrent_s,
        "sequential_tok_s": sum(sequential) / sequential_s,
        "tokens": float(sum(counts)),
    }


def _start_neuron(work: Path, model_dir: Path, port: int, threads: int) -> subprocess.Popen[bytes]:
    (work / "models.toml").write_text(f'[[models]]\nid = "demo"\nsource = "{model_dir.name}"\n')
    (work / "neuron.toml").write_text(
        'preload = ["demo"]\n[neuron]\nname = "bench"\n'
        f'listen = "127.0.0.1:{port}"\nmodel_roots = ["{model_dir.parent}"]\n'
        f'models = "models.toml"\ntorch_threads = {threads}\ncpu_memory_budget_gb = 4.0\n'
    )
    cmd = [sys.executable, "-m", "cortex", "--log-level", "warning", "--role", "neuron"]
    return subprocess.Popen([*cmd, "--config", str(work / "neuron.toml")])


SERVE_MISSING = "transformers CLI not found: pip install 'transformers[serving]'"


def _start_serve(
    model_dir: Path, port: int, threads: int, *, num_blocks: int
) -> subprocess.Popen[bytes] | None:
    """``transformers serve --continuous-batching`` on ``model_dir`` (64-token blocks, 1024
    batch tokens); None when its CLI is not installed."""
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent))
    if exe is None:
        return None
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(
        [exe, "serve", str(model_dir), "--device", "cpu", "--port", str(port),
         "--continuous-batching", "--cb-num-blocks", str(num_blocks), "--cb-block-size", "64",
         "--cb-max-batch-tokens", "1024"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def _neuron_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    await _wait(url + "/health", proc)
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            async with session.get(url + "/v1/models") as resp:
                if (await resp.json())["data"]:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError("preload did not finish")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both servers")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from cortex_transformers.demo import write_demo_model

    work = Path(tempfile.mkdtemp(prefix="cortex-bench-"))
    model_dir = write_demo_model(work / "models" / "demo", size=args.size)
    results: dict[str, list[dict[str, float]]] = {"cortex neuron": [], "transformers serve": []}
    for _ in range(args.rounds):
        port = _free_port()
        neuron = _start_neuron(work, model_dir, port, args.threads)
        try:
            await _neuron_ready(f"http://127.0.0.1:{port}", neuron)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            results["cortex neuron"].append(
                await _measure(url, "demo", args.concurrency, args.tokens)
            )
        finally:
            _stop(neuron)
        port = _free_port()
        serve = _start_serve(model_dir, port, args.threads, num_blocks=64)
        if serve is None:
            print(SERVE_MISSING)
            continue
        try:
            await _wait(f"http://127.0.0.1:{port}/v1/models", serve)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            results["transformers serve"].append(
                await _measure(url, str(model_dir), args.concurrency, args.tokens)
            )
        finally:
            _stop(serve)
    print(f"\n{args.size} demo model, {args.concurrency} x {args.tokens} tokens, greedy, "
          f"{args.threads} torch thread(s); best of {args.rounds}")  # fmt: skip
    print(f"{'server':<20} {'concurrent s':>12} {'agg tok/s':>10} {'seq tok/s':>10}")
    best: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        if runs:
            best[name] = max(runs, key=lambda r: r["concurrent_tok_s"])
            r = best[name]
            print(f"{name:<20} {r['concurrent_s']:>12.3f} {r['concurrent_tok_s']:>10.1f} "
                  f"{r['sequential_tok_s']:>10.1f}")  # fmt: skip
    if len(best) == 2:
        ratio = (
            best["cortex neuron"]["concurrent_tok_s"]
            / best["transformers serve"]["concurrent_tok_s"]
        )
        print(f"aggregate tok/s ratio (cortex / transformers serve): {ratio:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
