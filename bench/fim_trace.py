"""Replay an editor's fill-in-the-middle trace against an OpenAI-compatible server.

An editor's autocomplete resends the file it edits on nearly every keystroke: the text before
the cursor as ``prompt``, the text after it as ``suffix``. Between requests the user types a
little near the cursor, so all but the last few hundred characters of the prefix are what the
server saw last time. A server that reuses the KV of that prefix answers in the time of the
changed tokens; one that does not re-prefills the whole file every time.

The file is synthetic Python of about ``--lines`` lines (~2k tokens with the default). Each of
``--requests`` requests edits one line a few lines above the cursor (near the end of the file)
and asks for a 1-token completion, non-streamed: its latency is prefill plus one token, the time
to first token (a random-weight demo model's first tokens often decode to no text, so a stream's
first chunk would not show it). ``--no-suffix`` sends the prefix alone (models without FIM
tokens, such as SmolLM2).

    python bench/fim_trace.py --url http://127.0.0.1:31313/v1 --model coder --requests 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from typing import Any


def source_file(lines: int) -> list[str]:
    """Plausible Python: small functions with arithmetic, names varying by line number."""
    out = []
    for i in range(lines):
        if i % 6 == 0:
            out.append(f"def step_{i}(value, scale={i % 7 + 1}):")
        elif i % 6 == 5:
            out.append(f"    return total_{i - 1} * scale + {i}\n")
        else:
            out.append(f"    total_{i} = value + {i * 3} - len(str(value)) * {i % 5}")
    return out


def request(url: str, key: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url + "/completions", data=data)
    req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as resp:
        answer = json.loads(resp.read())
    return time.perf_counter() - started, answer


def run(url: str, model: str, key: str, lines: int, requests: int, suffix: bool) -> dict[str, Any]:
    text = source_file(lines)
    cursor = lines - 8  # the user works near the end of the file
    # Load on demand and warm up with an unrelated prompt (it shares no prefix with the file).
    request(url, key, {"model": model, "prompt": "warm up", "max_tokens": 1})
    rows = []
    for n in range(requests):
        if n:  # a small edit two lines above the cursor
            text[cursor - 2] = text[cursor - 2].rstrip() + f"  # edit {n}"
        prefix = "\n".join(text[:cursor]) + "\n    "
        body: dict[str, Any] = {"model": model, "prompt": prefix, "max_tokens": 1, "temperature": 0}
        if suffix:
            body["suffix"] = "\n" + "\n".join(text[cursor:])
        seconds, answer = request(url, key, body)
        usage = answer["usage"]
        details = usage.get("prompt_tokens_details") or {}
        rows.append(
            {
                "request": n + 1,
                "ttft_s": round(seconds, 4),
                "prompt_tokens": usage["prompt_tokens"],
                "cached_tokens": details.get("cached_tokens"),
            }
        )
    first = rows[0]["ttft_s"]
    later = statistics.median(r["ttft_s"] for r in rows[1:])
    return {
        "requests": requests,
        "prompt_tokens": rows[-1]["prompt_tokens"],
        "suffix": suffix,
        "ttft_first_s": first,
        "ttft_later_median_s": round(later, 4),
        "later_over_first": round(later / first, 3),
        "cached_later_median": statistics.median(r["cached_tokens"] or 0 for r in rows[1:]),
        "rows": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="base URL ending in /v1")
    p.add_argument("--model", required=True)
    p.add_argument("--key", default="")
    p.add_argument(
        "--lines", type=int, default=62, help="file length (62 lines: ~2k demo-model tokens)"
    )
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--no-suffix", action="store_true", help="send the prefix alone (no FIM)")
    args = p.parse_args()
    summary = run(args.url, args.model, args.key, args.lines, args.requests, not args.no_suffix)
    for row in summary.pop("rows"):
        print(json.dumps(row))
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
