"""Embeddings per second for short inputs: one batched request against one request per input.

Codebase indexers send chunks in lists; a naive client sends them one by one. ``--inputs``
short texts (a line of code each) are embedded ``--rounds`` times both ways against an
OpenAI-compatible ``/v1/embeddings``; the batched vectors are checked against the one-by-one
vectors (max absolute difference reported).

    python bench/embeddings.py --url http://127.0.0.1:31313/v1 --model embed --inputs 64
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from typing import Any


def texts(count: int) -> list[str]:
    return [
        f"def handler_{i}(request): return respond(request, status={200 + i % 5})"
        for i in range(count)
    ]


def embed(url: str, key: str, model: str, given: str | list[str]) -> list[list[float]]:
    body = {"model": model, "input": given, "encoding_format": "float"}
    req = urllib.request.Request(url + "/embeddings", data=json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=600) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return [d["embedding"] for d in sorted(answer["data"], key=lambda d: d["index"])]


def run(url: str, model: str, key: str, count: int, rounds: int) -> dict[str, Any]:
    inputs = texts(count)
    embed(url, key, model, inputs[:2])  # warm-up (and load on demand)
    started = time.perf_counter()
    for _ in range(rounds):
        batched = embed(url, key, model, inputs)
    batch_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(rounds):
        single = [embed(url, key, model, text)[0] for text in inputs]
    single_s = time.perf_counter() - started
    diff = max(
        abs(a - b) for u, v in zip(batched, single, strict=True) for a, b in zip(u, v, strict=True)
    )
    return {
        "inputs": count,
        "rounds": rounds,
        "batched_per_s": round(count * rounds / batch_s, 1),
        "one_at_a_time_per_s": round(count * rounds / single_s, 1),
        "speedup": round(single_s / batch_s, 2),
        "max_abs_diff": diff,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="base URL ending in /v1")
    p.add_argument("--model", required=True)
    p.add_argument("--key", default="")
    p.add_argument("--inputs", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print("SUMMARY " + json.dumps(run(args.url, args.model, args.key, args.inputs, args.rounds)))


if __name__ == "__main__":
    main()
