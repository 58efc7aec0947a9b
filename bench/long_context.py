"""Long-context benchmark: one stream's prefill and decode speed at agent-sized contexts.

A coding agent's reply is decoded over its whole context (Claude Code: 20-60k tokens), so what
one decode step costs at that length is what the user waits for per token. This starts the
cortex neuron and ``transformers serve --continuous-batching`` on the same 64M demo model
(its position limit raised to 32k: random weights, so any length is as good as another), one
at a time, in one run, and sends each one prompt per ``--contexts`` size:

    .venv/bin/python bench/long_context.py --contexts 4000 16000

Reports time to first token and decode tok/s (tokens after the first over the time they took).
Needs ``transformers[serving]`` for the peer (skipped with a note when it is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from agent_trace import _text
from engine import _cortex
from neuron_throughput import SERVE_MISSING, _free_port, _start_serve, _stop, _wait

WORDS_PER_TOKEN = 0.27  # the demo tokenizer on agent_trace's word list


async def _complete(url: str, model: str, prompt: str, tokens: int) -> tuple[float, int, int]:
    """Seconds, prompt tokens and completion tokens of one non-stream greedy completion."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=3600)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(url + "/chat/completions", json=body) as resp,
    ):
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {await resp.text()}")
        usage = (await resp.json())["usage"]
    return time.perf_counter() - started, usage["prompt_tokens"], usage["completion_tokens"]


async def _measure(url: str, model: str, size: int, tokens: int) -> dict[str, Any]:
    """Two prompts of ``size`` tokens (different texts: no prefix cache between them): one
    answered with 1 token (its time is the time to first token), one with ``tokens``; the
    difference is the decode time. A random model's text often decodes to nothing, so the
    stream's chunks cannot time its tokens."""
    words = int(size * WORDS_PER_TOKEN)
    await _complete(url, model, "warm up", 4)  # a server's first request pays its set-up
    first, prompt_tokens, _ = await _complete(url, model, _text(words, size), 1)
    total, _, generated = await _complete(url, model, _text(words, size + 1), tokens)
    return {
        "prompt_tokens": prompt_tokens,
        "ttft_s": round(first, 2),
        "decode_tok_s": round((generated - 1) / (total - first), 1),
        "decoded": generated,
    }


def _model(work: Path) -> Path:
    from cortex_transformers.demo import write_demo_model

    model_dir = write_demo_model(work / "models" / "demo", size="small")
    config = json.loads((model_dir / "config.json").read_text())
    config["max_position_embeddings"] = 32768
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[4000, 16000])
    parser.add_argument("--tokens", type=int, default=256, help="tokens to decode per prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-peer", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cortex-long-context-"))
    model_dir = _model(work)
    results: dict[str, list[dict[str, Any]]] = {}
    async with _cortex(work, model_dir, args.threads) as (url, model):
        results["cortex neuron"] = [
            await _measure(url, model, n, args.tokens) for n in args.contexts
        ]
        print(json.dumps(results), flush=True)
    if not args.skip_peer:
        port = _free_port()
        proc = _start_serve(model_dir, port, args.threads, num_blocks=max(args.contexts) // 64 + 8)
        if proc is None:
            print(SERVE_MISSING)
        else:
            try:
                await _wait(f"http://127.0.0.1:{port}/v1/models", proc)
                url = f"http://127.0.0.1:{port}/v1"
                results["transformers serve"] = [
                    await _measure(url, str(model_dir), n, args.tokens) for n in args.contexts
                ]
            finally:
                _stop(proc)
    print(f"\n64M demo model, {args.threads} torch thread(s), {args.tokens} tokens decoded\n")
    print("| context (prompt tokens) | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for i, size in enumerate(args.contexts):
        for field, label in (("ttft_s", "time to first token s"), ("decode_tok_s", "decode tok/s")):
            cells = [str(runs[i][field]) for runs in results.values()]
            tokens = next(iter(results.values()))[i]["prompt_tokens"] or size
            print(f"| {tokens}: {label} | " + " | ".join(cells) + " |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
