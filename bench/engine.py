"""Engine benchmark: the cortex neuron against ``transformers serve --continuous-batching``.

Both serve the same demo model directory on loopback, one at a time, with the same torch thread
count, in one run (the machine is shared and noisy: compare the ratios, not the absolutes):

1. the agent trace (agent_trace.py): 1 session, then 4 concurrent sessions sharing the system
   prompt; time to first token of turn 1 against later turns;
2. 16 concurrent requests x ``--tokens`` tokens, greedy, then sampled (temperature 1, top_p
   0.95): aggregate tok/s from the usage each server returns;
3. whether sampling really samples: two identical unseeded sampled requests should differ, two
   with the same seed should repeat;
4. head-of-line blocking: an agent's later turn (a few hundred new tokens over a cached
   prefix), alone and then sent while another session's long first turn (``--long-words``) is
   prefilling.

    .venv/bin/python bench/engine.py --size small
    .venv/bin/python bench/engine.py --size tiny --turns 3   # a quick smoke run
    .venv/bin/python bench/engine.py --size smollm2 --reply-tokens 96   # the real model

``--size smollm2`` serves SmolLM2-135M-Instruct (the GGUF ``make model-fetch`` caches, saved
once as float32 safetensors beside it, since ``transformers serve`` cannot read a GGUF) to both
servers. A real model's replies re-tokenize to the ids it generated, so a server that caches
the KV it decoded can reuse the reply on the next turn; the random demo model's cannot show it.

Needs ``transformers[serving]`` for the peer (skipped with a note when it is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from agent_trace import Trace, _text
from agent_trace import run as run_trace
from neuron_throughput import (
    PROMPTS,
    SERVE_MISSING,
    _free_port,
    _neuron_ready,
    _start_neuron,
    _start_serve,
    _stop,
    _wait,
)

SAMPLED = {"temperature": 1.0, "top_p": 0.95}
GREEDY = {"temperature": 0}


async def _complete(
    http: aiohttp.ClientSession, url: str, model: str, prompt: str, tokens: int, **extra: Any
) -> tuple[int, str]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    async with http.post(url, json={**body, "max_tokens": tokens, **extra}) as resp:
        data = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {data}")
        return int(data["usage"]["completion_tokens"]), data["choices"][0]["message"]["content"]


async def _fanout(url: str, model: str, n: int, tokens: int, sampling: dict[str, Any]) -> float:
    """Aggregate tok/s of ``n`` concurrent requests."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as http:
        await _complete(http, url, model, "warm up", 4, **sampling)
        started = time.perf_counter()
        done = await asyncio.gather(
            *(_complete(http, url, model, PROMPTS[i], tokens, **sampling) for i in range(n))
        )
        return sum(count for count, _ in done) / (time.perf_counter() - started)


async def _sampling_is_real(url: str, model: str) -> dict[str, bool]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:

        async def twice(**extra: Any) -> bool:
            texts = [(await _complete(http, url, model, "Tell a story", 24, **extra))[1]]
            texts.append((await _complete(http, url, model, "Tell a story", 24, **extra))[1])
            return texts[0] == texts[1]

        return {
            "unseeded_pair_differs": not await twice(**SAMPLED),
            "seeded_pair_repeats": await twice(**SAMPLED, seed=7),
        }


async def _traces(base: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    trace = Trace(
        turns=args.turns,
        system_words=args.system_words,
        turn_words=args.turn_words,
        out_tokens=args.reply_tokens,
    )
    one = await run_trace(base, model, trace)
    four = await run_trace(base, model, dataclasses.replace(trace, sessions=4))
    return {
        "trace_1": {k: v for k, v in one.items() if k != "rows"},
        "trace_1_rows": [
            {k: r[k] for k in ("turn", "ttft_s", "first_text_s", "prompt_tokens", "cached_tokens")}
            for r in one["rows"]
        ],
        "trace_4": {k: v for k, v in four.items() if k != "rows"},
        **await _sampling_is_real(base + "/chat/completions", model),
    }


async def _probe(http: aiohttp.ClientSession, url: str, model: str, messages: list) -> float:
    """Seconds to a one-token completion: the time to first token, prefill included."""
    started = time.perf_counter()
    body = {"model": model, "messages": messages, "max_tokens": 1, "temperature": 0}
    async with http.post(url, json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {await resp.text()}")
        await resp.read()
    return time.perf_counter() - started


async def _behind_a_long_prompt(base: str, model: str, args: argparse.Namespace) -> dict:
    """A later agent turn's time to first token alone, then while a long first turn of another
    session prefills (sent 0.5 s after it)."""
    url = base + "/chat/completions"
    turn = [{"role": "system", "content": _text(args.system_words, 7)}]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as http:
        for index in range(3):
            if index:
                turn.append({"role": "assistant", "content": _text(args.turn_words // 2, index)})
            turn.append({"role": "user", "content": _text(args.turn_words, 100 + index)})
            took = await _probe(http, url, model, turn)  # turn 0 fills the prefix cache
        # Two different long prompts: the second must not find the first's blocks cached.
        long = [[{"role": "user", "content": _text(args.long_words, seed)}] for seed in (98, 99)]
        alone_long = await _probe(http, url, model, long[0])
        first_turn = asyncio.create_task(_probe(http, url, model, long[1]))
        await asyncio.sleep(0.5)
        turn += [
            {"role": "assistant", "content": _text(args.turn_words // 2, 9)},
            {"role": "user", "content": _text(args.turn_words, 109)},
        ]
        behind = await _probe(http, url, model, turn)
        long_s = await first_turn
    return {
        "later_turn_alone_s": round(took, 3),
        "later_turn_behind_long_s": round(behind, 3),
        "long_first_turn_s": round(long_s, 3),
        "long_first_turn_alone_s": round(alone_long, 3),
    }


def _kit_trace(script: Path, url: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """The shared kit's replay (one session), its summary line."""
    cmd = [
        sys.executable, str(script), "--url", url, "--model", model, "--turns", str(args.turns),
        "--system-words", str(args.system_words), "--turn-words", str(args.turn_words),
        "--out-tokens", str(args.reply_tokens),
    ]  # fmt: skip
    lines = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
    summary: dict[str, Any] = json.loads(lines[-1].removeprefix("SUMMARY "))
    summary["ttft_s"] = [round(json.loads(line)["ttft_s"], 3) for line in lines[:-1]]
    return summary


async def _throughput(base: str, model: str, tokens: int) -> dict[str, float]:
    url = base + "/chat/completions"
    return {
        "greedy_8_tok_s": round(await _fanout(url, model, 8, tokens, GREEDY), 1),
        "greedy_16_tok_s": round(await _fanout(url, model, 16, tokens, GREEDY), 1),
        "sampled_16_tok_s": round(await _fanout(url, model, 16, tokens, SAMPLED), 1),
    }


def _model_dir(work: Path, size: str) -> Path:
    """A model directory both servers can load: a demo model, or SmolLM2 as safetensors."""
    if size != "smollm2":
        from cortex_transformers.demo import write_demo_model

        return write_demo_model(work / "models" / "demo", size=size)  # type: ignore[arg-type]
    from cortex import starter

    gguf = starter.fetch()
    saved = gguf.parent.parent / "smollm2-float32"
    if not (saved / "config.json").exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model.hf_quantizer = None  # save_pretrained refuses a GGUF-loaded model otherwise
        del model.config.quantization_config
        model.save_pretrained(saved)
        tokenizer.save_pretrained(saved)
    return saved


@asynccontextmanager
async def _cortex(work: Path, model_dir: Path, threads: int) -> AsyncIterator[tuple[str, str]]:
    port = _free_port()
    proc = _start_neuron(work, model_dir, port, threads)
    try:
        await _neuron_ready(f"http://127.0.0.1:{port}", proc)
        yield f"http://127.0.0.1:{port}/v1", "demo"
    finally:
        _stop(proc)


@asynccontextmanager
async def _peer(model_dir: Path, threads: int) -> AsyncIterator[tuple[str, str]]:
    port = _free_port()
    proc = _start_serve(model_dir, port, threads, num_blocks=256)
    if proc is None:
        raise FileNotFoundError(SERVE_MISSING)
    try:
        await _wait(f"http://127.0.0.1:{port}/v1/models", proc)
        yield f"http://127.0.0.1:{port}/v1", str(model_dir)
    finally:
        _stop(proc)  # SIGINT then kill: serve with CB needs SIGTERM or kill to exit


_TRACE_ROWS = [  # (label, trace key, field)
    ("agent trace, turn-1 TTFT s", "trace_1", "ttft_turn1_median_s"),
    ("agent trace, later-turn TTFT s (median)", "trace_1", "ttft_later_median_s"),
    ("later / turn 1", "trace_1", "later_over_turn1"),
    ("first text of the reply, turn 1 s", "trace_1", "first_text_turn1_median_s"),
    ("first text of the reply, later turns s", "trace_1", "first_text_later_median_s"),
    ("agent trace wall s", "trace_1", "wall_s"),
    ("4 sessions, turn-1 TTFT s", "trace_4", "ttft_turn1_median_s"),
    ("4 sessions, later-turn TTFT s", "trace_4", "ttft_later_median_s"),
    ("4 sessions, later / turn 1", "trace_4", "later_over_turn1"),
    ("4 sessions wall s", "trace_4", "wall_s"),
    ("kit trace, turn-1 first content s", "kit_trace", "ttft_turn1_median_s"),
    ("kit trace, later-turn first content s (median)", "kit_trace", "ttft_later_median_s"),
    ("kit trace wall s", "kit_trace", "wall_s"),
]
_BEHIND_ROWS = [  # (label, field)
    ("later turn alone, TTFT s", "later_turn_alone_s"),
    ("later turn sent 0.5 s into a long first turn's prefill, TTFT s", "later_turn_behind_long_s"),
    ("that long first turn, TTFT s", "long_first_turn_s"),
    ("a long first turn alone, TTFT s", "long_first_turn_alone_s"),
]
_ROWS = [  # (label, field)
    ("8-way greedy tok/s", "greedy_8_tok_s"),
    ("16-way greedy tok/s", "greedy_16_tok_s"),
    ("16-way temperature 1 / top_p 0.95 tok/s", "sampled_16_tok_s"),
]
_CHECK_ROWS = [
    ("two unseeded sampled requests differ", "unseeded_pair_differs"),
    ("two seeded sampled requests repeat", "seeded_pair_repeats"),
]


def _report(
    results: dict[str, dict[str, Any]], *, traces: bool, throughput: bool, behind: bool
) -> None:
    print("\n| | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    rows = [row for row in _TRACE_ROWS if traces or row[1] == "kit_trace"]
    if not all("kit_trace" in r for r in results.values()):
        rows = [row for row in rows if row[1] != "kit_trace"]
    lines = [(label, [r[key][field] for r in results.values()]) for label, key, field in rows]
    if throughput:
        lines += [(label, [r[field] for r in results.values()]) for label, field in _ROWS]
    if traces:
        lines += [(label, [r[field] for r in results.values()]) for label, field in _CHECK_ROWS]
    if behind:
        lines += [(label, [r[field] for r in results.values()]) for label, field in _BEHIND_ROWS]
    for label, values in lines:
        print(f"| {label} | " + " | ".join(str(v) for v in values) + " |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small", "smollm2"], default="small")
    parser.add_argument("--reply-tokens", type=int, default=32, help="agent trace reply length")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--turns", type=int, default=6)
    # The shape on the small demo tokenizer: a ~2.2k-token system prompt, ~150 new
    # tokens a turn.
    parser.add_argument("--system-words", type=int, default=600)
    parser.add_argument("--turn-words", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both servers")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds, interleaved")
    parser.add_argument(
        "--kit-trace",
        type=Path,
        help="also run the shared bench kit's agent_trace.py (issue 15's own measure: time to "
        "the first content chunk, no probe) against each server",
    )
    parser.add_argument(
        "--long-words",
        type=int,
        default=1000,
        help="the long first turn of the head-of-line measure (0 skips it; ~3.7k demo tokens, "
        "within the demo model's 4096-token context)",
    )
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-traces", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cortex-engine-bench-"))
    model_dir = _model_dir(work, args.size)
    async with AsyncExitStack() as stack:
        # Both servers stay up for the whole run, one measured at a time, so machine noise
        # hits both alike; throughput rounds alternate between them.
        servers = {
            "cortex neuron": await stack.enter_async_context(_cortex(work, model_dir, args.threads))
        }
        if not args.skip_peer:
            servers["transformers serve"] = await stack.enter_async_context(
                _peer(model_dir, args.threads)
            )
        results: dict[str, dict[str, Any]] = {name: {} for name in servers}
        for name, (url, model) in servers.items():
            if args.kit_trace is not None:
                results[name]["kit_trace"] = _kit_trace(args.kit_trace, url, model, args)
                print(json.dumps({name: results[name]["kit_trace"]}), flush=True)
            if not args.skip_traces:
                results[name].update(await _traces(url, model, args))
                print(json.dumps({name: results[name]}), flush=True)
            if args.long_words:
                results[name].update(await _behind_a_long_prompt(url, model, args))
                print(json.dumps({name: results[name]}), flush=True)
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, (url, model) in servers.items():
                rounds[name].append(await _throughput(url, model, args.tokens))
                print(json.dumps({name: rounds[name][-1]}), flush=True)
    for name, runs in rounds.items():
        for key in runs[0] if runs else ():
            results[name][key] = statistics.median(run[key] for run in runs)
    print(f"\n{args.size} model, {args.reply_tokens}-token replies, {args.threads} torch "
          f"thread(s), {args.turns} turns, throughput: median of {args.rounds} rounds")  # fmt: skip
    _report(
        results,
        traces=not args.skip_traces,
        throughput=args.rounds > 0,
        behind=args.long_words > 0,
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
