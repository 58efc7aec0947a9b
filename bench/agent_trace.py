"""Replay coding-agent sessions against an OpenAI-compatible server and time each turn.

A coding agent (Claude Code, Codex, aider) resends its whole context every turn: a long system
prompt with tool definitions, every earlier message, then a few hundred new tokens. A server that
reuses the KV of the shared prefix answers turn N in the time of the new tokens; one that does not
re-prefills everything, and its time to first token grows with the conversation.

Each session: one system prompt of about ``system_words`` words (the same for every session, as
one agent's tool list is), then ``turns`` turns; each adds a user message of about ``turn_words``
words, streams a greedy reply of ``out_tokens`` tokens and keeps it in the context. Sessions run
concurrently. (Adapted from the shared bench kit's agent_trace.py.)

Time to first token is measured with a 1-token completion of the turn's prompt just before the
turn (prefill plus one token), because a random-weight demo model often starts its reply with
tokens that decode to no text, which would make "first content chunk" time mostly decode steps
of the reply. The streamed reply's first non-empty chunk is reported too, as ``first_text_s``
(it follows the probe, so its prompt is warm on a server that reuses prefixes).

    python bench/agent_trace.py --url http://127.0.0.1:13131/v1 --model demo --turns 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

WORDS = [
    "file",
    "function",
    "class",
    "return",
    "import",
    "value",
    "error",
    "test",
    "build",
    "path",
    "read",
    "write",
    "edit",
    "search",
    "tool",
    "call",
    "result",
    "line",
    "change",
    "update",
    "module",
    "config",
    "request",
    "response",
    "stream",
    "token",
    "model",
    "cache",
    "batch",
    "queue",
    "node",
    "gateway",
    "neuron",
    "memory",
    "device",
    "load",
    "unload",
    "route",
    "metric",
    "status",
]


@dataclass(frozen=True)
class Trace:
    sessions: int = 1
    turns: int = 6
    system_words: int = 1500
    turn_words: int = 150
    out_tokens: int = 32


def _text(words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def _turn(
    http: aiohttp.ClientSession, url: str, model: str, messages: list[dict[str, str]], out: int
) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": out,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    probe = {"model": model, "messages": messages, "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    async with http.post(url + "/chat/completions", json=probe) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        probed = await resp.json()
    first_token = time.perf_counter() - started
    details = probed["usage"].get("prompt_tokens_details") or {}
    started = time.perf_counter()
    ttft: float | None = None
    reply: list[str] = []
    usage: dict[str, Any] = {}
    async with http.post(url + "/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            event = json.loads(line[5:])
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                if piece := (choice.get("delta") or {}).get("content"):
                    ttft = ttft if ttft is not None else time.perf_counter() - started
                    reply.append(piece)
    total = time.perf_counter() - started
    return {
        "ttft_s": first_token,
        "first_text_s": ttft if ttft is not None else total,
        "prompt_tokens": usage.get("prompt_tokens"),
        "cached_tokens": details.get("cached_tokens"),
        "reply": "".join(reply),
    }


async def _session(
    http: aiohttp.ClientSession, url: str, model: str, trace: Trace, sid: int
) -> list[dict[str, Any]]:
    system = "You are a coding agent. Tools:\n" + _text(trace.system_words, seed=1)
    messages = [{"role": "system", "content": system}]
    rows = []
    for t in range(1, trace.turns + 1):
        messages.append({"role": "user", "content": _text(trace.turn_words, seed=1000 * sid + t)})
        row = await _turn(http, url, model, messages, trace.out_tokens)
        messages.append({"role": "assistant", "content": row.pop("reply") or "ok"})
        rows.append({"session": sid, "turn": t, **row})
    return rows


async def run(
    url: str, model: str, trace: Trace, key: str = "", fresh_connections: bool = False
) -> dict[str, Any]:
    """Replay ``trace`` against ``url`` (ending in /v1); returns the summary and every turn.

    ``fresh_connections`` opens a connection per request: llama-server closes a keep-alive
    connection between requests, and a request written to it then fails mid-body.
    """
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = aiohttp.ClientTimeout(total=3600)
    connector = aiohttp.TCPConnector(force_close=fresh_connections)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as http:
        started = time.perf_counter()
        per = await asyncio.gather(
            *(_session(http, url, model, trace, s) for s in range(trace.sessions))
        )
        wall = time.perf_counter() - started
    rows = [r for rs in per for r in rs]
    first = statistics.median(r["ttft_s"] for r in rows if r["turn"] == 1)
    later = statistics.median(r["ttft_s"] for r in rows if r["turn"] > 1)
    text = [
        statistics.median(r["first_text_s"] for r in rows if (r["turn"] > 1) == x) for x in (0, 1)
    ]
    return {
        "sessions": trace.sessions,
        "turns": trace.turns,
        "last_prompt_tokens": max(r["prompt_tokens"] or 0 for r in rows),
        "ttft_turn1_median_s": round(first, 3),
        "ttft_later_median_s": round(later, 3),
        "later_over_turn1": round(later / first, 3),
        "first_text_turn1_median_s": round(text[0], 3),
        "first_text_later_median_s": round(text[1], 3),
        "wall_s": round(wall, 2),
        "rows": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="base URL ending in /v1")
    p.add_argument("--model", required=True)
    p.add_argument("--key", default="", help="bearer token, if the server wants one")
    for field, default in Trace().__dict__.items():
        p.add_argument("--" + field.replace("_", "-"), type=int, default=default)
    args = p.parse_args()
    trace = Trace(**{f: getattr(args, f) for f in Trace().__dict__})
    summary = asyncio.run(run(args.url, args.model, trace, args.key))
    for row in summary.pop("rows"):
        print(json.dumps(row))
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
