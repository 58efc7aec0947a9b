"""Decode benchmark: SmolLM2-135M-Instruct's decode tok/s through the engine, in process.

No HTTP: each engine under test is a child process that loads the model through
``TransformersHarness`` once and then, on each command from this script, runs one stream and
then ``--streams`` concurrent streams of ``--tokens`` greedy tokens (``ignore_eos``), and answers
their decode tok/s: tokens after each stream's first, over the time from the last stream's first
token to the last token (prefill is not in it). Children take turns, round after round, so the
shared machine's noise hits each alike; the table gives medians, and the load average is
printed before and after.

    .venv/bin/python bench/decode.py                         # this tree alone
    .venv/bin/python bench/decode.py --tree main=/work/main  # and another checkout, interleaved
    .venv/bin/python bench/decode.py --variant bf16:dtype=bfloat16   # a load option as a column
    .venv/bin/python bench/decode.py --profile 1             # torch.profiler on the worker
    .venv/bin/python bench/decode.py --compile-step --streams 1 --rounds 6   # eager vs compiled
    .venv/bin/python bench/decode.py --variant compiled:compiled_decode=true --concurrency 8

``--variant NAME:FIELD=VALUE,...`` loads this tree with those LoadRequest fields (``dtype``,
``quantization``, ``compiled_decode``; a value is JSON where it parses); several may be given.
``--contexts 100 1000 2500`` adds one stream's decode tok/s after a prompt of each length.
``--all FIELD=VALUE,...`` loads every column (trees too) with those fields:

    .venv/bin/python bench/decode.py --tree old=/tmp/wt --all quantization=int4,compiled_decode=true

Each column's load time (compilation included) is printed. ``--check`` also asserts that
every column's greedy tokens equal the first column's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a hash map works.",
    "What is the capital of France? Tell me about it.",
    "List some tips for learning to cook.",
    "Describe the water cycle.",
    "Why is the sky blue?",
    "Write a poem about autumn leaves.",
    "How do airplanes stay in the air?",
    "Summarise the plot of a heist film.",
    "What makes a good cup of coffee?",
    "Explain recursion to a child.",
    "Describe a busy market in the morning.",
    "What are the planets of the solar system?",
    "Give advice for a first job interview.",
    "How does a bicycle gear work?",
    "Tell me about the history of tea.",
]


def _pythonpath(tree: Path) -> str:
    parts = [tree, tree / "harnesses" / "transformers", tree / "harnesses" / "example"]
    return os.pathsep.join(str(p) for p in parts)


# ---- the child: one engine, driven over stdin ----


async def _stream(model: Any, prompt: list[int], params: Any) -> tuple[float, float, list[int]]:
    """(time of the first token, of the last, the token count per event)."""
    first = last = 0.0
    counts: list[int] = []
    async for event in model.generate(prompt, params):
        last = time.perf_counter()
        if not counts:
            first = last
        counts.append(event.completion_tokens)
    return first, last, counts


async def _measure(model: Any, streams: int, tokens: int) -> dict[str, Any]:
    from cortex.neuron.harness import SamplingParams

    params = SamplingParams(max_new_tokens=tokens, temperature=0.0, ignore_eos=True)
    prompts = [model.encode_chat([{"role": "user", "content": p}], None) for p in PROMPTS]
    done = await asyncio.gather(
        *(_stream(model, prompts[i % len(prompts)], params) for i in range(streams))
    )
    start = max(first for first, _, _ in done)
    end = max(last for _, last, _ in done)
    decoded = sum(counts[-1] - 1 for _, _, counts in done)
    return {"tok_s": decoded / (end - start), "step_ms": 1000 * (end - start) / (tokens - 1)}


async def _contexts(model: Any, args: argparse.Namespace) -> dict[str, float]:
    """One stream's decode tok/s after a prompt of each ``--contexts`` length (this file's
    source, repeated, cut to that many tokens)."""
    from cortex.neuron.harness import SamplingParams

    params = SamplingParams(max_new_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    text = Path(__file__).read_text() * 8
    ids = model.encode_chat([{"role": "user", "content": text}], None)
    out = {}
    for length in args.contexts:
        first, last, counts = await _stream(model, ids[:length], params)
        out[str(length)] = (counts[-1] - 1) / (last - first)
    return out


def _greedy_texts(model: Any, tokens: int) -> list[list[int]]:
    """The greedy replies to the first 8 prompts, one at a time, through the engine."""
    from cortex.neuron.harness import SamplingParams

    params = SamplingParams(max_new_tokens=tokens, temperature=0.0, ignore_eos=True)
    out = []
    for text in PROMPTS[:8]:
        prompt = model.encode_chat([{"role": "user", "content": text}], None)
        seq_text = asyncio.run(_text(model, prompt, params))
        out.append(seq_text)
    return out


async def _text(model: Any, prompt: list[int], params: Any) -> Any:
    return "".join([event.text async for event in model.generate(prompt, params)])


def child(args: argparse.Namespace) -> None:
    import torch
    from cortex_transformers.harness import TransformersHarness

    from cortex import starter
    from cortex.neuron.harness import LoadOptions
    from cortex.protocol.neuron import LoadRequest

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    gguf = starter.fetch()
    fields = {k: _value(v) for k, v in json.loads(args.fields).items()}
    hooks = {k: fields.pop(k) for k in list(fields) if k.startswith("_")}
    request = LoadRequest(model="smollm2", source=str(gguf), **fields)
    concurrency = args.concurrency or max(16, args.streams)
    options = LoadOptions(torch_threads=args.threads, max_concurrency=concurrency)
    started = time.perf_counter()
    model = TransformersHarness().load(request, str(gguf), "cpu", options, lambda f, s: None)
    load_s = time.perf_counter() - started
    _experiment(model, hooks)
    asyncio.run(_measure(model, 1, 8))  # warm-up (and compilation, where there is one)
    asyncio.run(_measure(model, args.streams, 8))
    print(json.dumps({"ready": True, "load_s": load_s}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            one = asyncio.run(_measure(model, 1, args.tokens))
            many = asyncio.run(_measure(model, args.streams, args.tokens))
            print(json.dumps({"one": one, "many": many}), flush=True)
        elif command == "contexts":
            print(json.dumps(asyncio.run(_contexts(model, args))), flush=True)
        elif command == "check":
            print(json.dumps({"texts": _greedy_texts(model, args.tokens)}), flush=True)
        elif command == "profile":
            print(json.dumps(_profile(model, args)), flush=True)
        else:
            break
    model.unload()


def _value(text: str) -> Any:
    """A --variant value: JSON where it parses (true, 3), else the string (bfloat16)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _experiment(model: Any, hooks: dict[str, str]) -> None:
    """Levers tried on the loaded engine without an engine option (``--variant x:_int8=1``):
    ``_int8``: torchao int8 weight-only linears; ``_compile``: torch.compile of the forward
    (its value the mode, "default" for none)."""
    import torch

    net = model._scheduler.runner._model
    if hooks.get("_int8"):
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(net, Int8WeightOnlyConfig())
    if mode := hooks.get("_compile"):
        net.forward = torch.compile(
            net.forward, dynamic=True, mode=None if mode == "default" else mode
        )


def _profile(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """torch.profiler on the decode worker's thread (a profiler sees the thread that starts
    it) while 1, then ``--streams``, streams decode; the engine's stages are labelled."""
    from cortex_transformers import scheduler as worker
    from torch.profiler import ProfilerActivity, profile, record_function

    sched, runner = model._scheduler, model._scheduler.runner

    def labelled(name: str, fn: Any) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            with record_function(name):
                return fn(*a, **k)

        return call

    saved = (worker.choose, sched._iterate)
    worker.choose = labelled("## choose (logits -> tokens)", worker.choose)
    runner.decode = labelled("## runner.decode", runner.decode)
    runner._model.forward = labelled("## model forward", runner._model.forward)
    runner._pool.view = labelled("## pool.view (cache objects)", runner._pool.view)
    sched._accept = labelled("## accept (detokenize, stop checks)", sched._accept)
    sched._deliver = labelled("## deliver (to the event loop)", sched._deliver)
    state: dict[str, Any] = {}

    def iterate() -> None:
        if state.get("start"):
            state["start"] = False
            state["prof"] = profile(activities=[ProfilerActivity.CPU])
            state["prof"].__enter__()
        with record_function("## iteration"):
            saved[1]()
        if state.get("stop") and "prof" in state:
            prof = state.pop("prof")
            prof.__exit__(None, None, None)
            averages = prof.key_averages()
            state["table"] = averages.table(sort_by="cpu_time_total", row_limit=args.rows)
            state["done"].set()

    sched._iterate = iterate
    tables = {}
    try:
        for streams in (1, args.streams):
            state.update(start=True, stop=False, done=threading.Event())
            result = asyncio.run(_measure(model, streams, args.tokens))
            state["stop"] = True
            asyncio.run(_measure(model, 1, 2))  # one more iteration stops the profiler
            state["done"].wait(60)
            tables[str(streams)] = {"result": result, "table": state["table"]}
    finally:
        worker.choose, sched._iterate = saved
    return tables


def compile_step(args: argparse.Namespace) -> None:
    """One decode step of ``--streams`` rows (equal lengths, no mask) through the model's
    eager forward and through ``torch.compile`` of it (``dynamic=True``; ``--freeze``: inductor
    freezing, which prepacks the weights), interleaved, in this process: the step's time
    without the engine around it, and how far the compiled logits are from eager's."""
    import torch
    from cortex_transformers.harness import TransformersHarness

    from cortex import starter
    from cortex.neuron.harness import LoadOptions
    from cortex.protocol.neuron import LoadRequest

    torch.set_num_threads(args.threads)
    if args.freeze:
        import torch._inductor.config

        torch._inductor.config.freezing = True
    gguf = starter.fetch()
    request = LoadRequest(model="smollm2", source=str(gguf))
    options = LoadOptions(torch_threads=args.threads, max_concurrency=max(2, args.streams))
    model = TransformersHarness().load(request, str(gguf), "cpu", options, lambda f, s: None)
    model._scheduler.stop()  # this thread runs the forward passes
    net, pool = model._model, model._scheduler.runner._pool
    rows = args.streams
    eager, compiled = net.forward, torch.compile(net.forward, dynamic=True)

    def step(forward: Any, width: int) -> tuple[float, Any]:
        read = torch.arange(rows)[:, None] * 4096 + torch.arange(width)  # [B, W]
        started = time.perf_counter()
        out = forward(
            input_ids=torch.full((rows, 1), 5),
            position_ids=torch.full((rows, 1), width - 1),
            cache=pool.view(read[:, -1:], read),
            use_cache=True,
        )
        return time.perf_counter() - started, out.logits[:, -1]

    print(f"load average before: {os.getloadavg()}", flush=True)
    with torch.inference_mode():
        started = time.perf_counter()
        step(compiled, 60)
        print(f"compile: {time.perf_counter() - started:.0f} s", flush=True)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for round_ in range(args.rounds):
            for name, forward in (("eager", eager), ("compiled", compiled)):
                widths = range(60 + 8 * round_, 68 + 8 * round_)
                times[name].append(statistics.median(step(forward, w)[0] for w in widths))
        reference, got = step(eager, 100)[1], step(compiled, 100)[1]
    print(f"load average after: {os.getloadavg()}")
    print(f"greedy tokens equal: {torch.equal(reference.argmax(-1), got.argmax(-1))}; "
          f"max |logit difference| {(reference - got).abs().max().item():.2e}")  # fmt: skip
    for name, runs in times.items():
        print(f"{name}: {rows} row(s), median step {1000 * statistics.median(runs):.1f} ms")


# ---- the parent ----


def _spawn(name: str, tree: Path, fields: dict[str, str], args: argparse.Namespace) -> Any:
    env = {**os.environ, "PYTHONPATH": _pythonpath(tree), "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", "--fields", json.dumps(fields),
        "--threads", str(args.threads), "--tokens", str(args.tokens),
        "--streams", str(args.streams), "--rows", str(args.rows),
        "--concurrency", str(args.concurrency),
        "--contexts", *map(str, args.contexts),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc


def _ask(proc: Any, command: str) -> dict[str, Any]:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return _answer(proc)


def _answer(proc: Any) -> dict[str, Any]:
    while line := proc.stdout.readline():
        if line.startswith("{"):
            answer: dict[str, Any] = json.loads(line)
            return answer
    raise RuntimeError(f"a child exited ({proc.wait()})")


def _fields(text: str) -> dict[str, str]:
    """``FIELD=VALUE,...`` -> a dict."""
    return dict(item.split("=", 1) for item in text.split(",") if item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH, another checkout")
    parser.add_argument("--variant", action="append", default=[], help="NAME:FIELD=VALUE,...")
    parser.add_argument("--no-this", action="store_true", help="leave this tree's column out")
    parser.add_argument("--all", default="", help="FIELD=VALUE,... for every column")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--contexts", type=int, nargs="*", default=[], help="also: 1 stream after N tokens"
    )
    parser.add_argument(
        "--concurrency", type=int, default=0, help="max_concurrency (0: max(16, --streams))"
    )
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--profile", type=int, default=0, help="profile this many columns")
    parser.add_argument("--rows", type=int, default=30, help="profile table rows")
    parser.add_argument(
        "--compile-step", action="store_true", help="eager vs torch.compile, one step alone"
    )
    parser.add_argument("--freeze", action="store_true", help="with --compile-step: freezing")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fields", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.compile_step:
        compile_step(args)
        return
    common = _fields(args.all)
    columns: list[tuple[str, Path, dict[str, str]]] = []
    for spec in args.tree:
        name, _, path = spec.partition("=")
        columns.append((name, Path(path), common))
    if not args.no_this:
        columns.append(("this", HERE, common))
    for spec in args.variant:
        name, _, rest = spec.partition(":")
        columns.append((name, HERE, {**common, **_fields(rest)}))
    print(f"load average before: {os.getloadavg()}", flush=True)
    procs = {name: _spawn(name, tree, fields, args) for name, tree, fields in columns}
    try:
        for name, proc in procs.items():  # one at a time: loads would fight for the cores
            print(f"{name}: loaded in {_answer(proc)['load_s']:.0f} s", flush=True)
        if args.check:
            texts = {name: _ask(proc, "check")["texts"] for name, proc in procs.items()}
            reference = next(iter(texts.values()))
            for name, got in texts.items():
                same = sum(a == b for a, b in zip(got, reference, strict=True))
                print(f"{name}: {same}/{len(reference)} greedy replies equal the first column's")
        for name, proc in list(procs.items())[: args.profile]:
            for streams, entry in _ask(proc, "profile").items():
                print(f"\n## {name}, {streams} stream(s): {entry['result']}\n{entry['table']}")
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in procs}
        for _ in range(args.rounds):
            for name, proc in procs.items():
                results[name].append(_ask(proc, "run"))
                if args.contexts:
                    results[name][-1]["contexts"] = _ask(proc, "contexts")
                print(json.dumps({name: results[name][-1]}), flush=True)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
                proc.wait(60)
    print(f"load average after: {os.getloadavg()}")
    if not args.rounds:
        return
    print(f"\nSmolLM2-135M, {args.threads} thread(s), {args.tokens} greedy tokens, "
          f"median of {args.rounds} interleaved rounds")  # fmt: skip
    print("\n| | " + " | ".join(procs) + " |")
    print("|---|" + "---|" * len(procs))
    for label, key, field in [
        ("1 stream, tok/s", "one", "tok_s"),
        ("1 stream, ms a step", "one", "step_ms"),
        (f"{args.streams} streams, tok/s", "many", "tok_s"),
        (f"{args.streams} streams, ms a step", "many", "step_ms"),
    ]:
        values = [statistics.median(r[key][field] for r in runs) for runs in results.values()]
        print(f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    for length in map(str, args.contexts):
        values = [
            statistics.median(r["contexts"][length] for r in runs) for runs in results.values()
        ]
        print(
            f"| 1 stream after {length} tokens, tok/s | "
            + " | ".join(f"{v:.1f}" for v in values)
            + " |"
        )


if __name__ == "__main__":
    main()
