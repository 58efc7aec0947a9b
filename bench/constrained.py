"""What constrained decoding costs (issue 21).

    python bench/constrained.py throughput [--size small] [--streams 16] [--tokens 64]
    python bench/constrained.py compile [--lib llguidance|xgrammar]
    python bench/constrained.py validate --url http://127.0.0.1:31313 [--prompts 30]

``throughput``: 16 concurrent sampled streams on the demo model, each exactly ``--tokens`` long,
without a constraint and then with a JSON schema (an array of strings too long to finish), in one
process, side by side; reports aggregate tok/s and the ratio.

``compile``: the grammar of a forced tool call over Claude Code's 25 tools
(bench/data/claude_code_tools.json, captured from Claude Code 2.1.197) on SmolLM2's tokenizer
(49,152 tokens, from the cached GGUF): tokenizer set-up, first compile, the cached second use,
and a mask per step. ``--lib xgrammar`` runs the same schema through xgrammar (install it in a
venv of its own: it pulls triton); the harness uses llguidance (grammar.py says why).

``validate``: against a running gateway serving SmolLM2 (``make serve``), the issue's 30 prompts
with ``tool_choice`` required in the OpenAI and Anthropic dialects and with a JSON schema, as in
tests/e2e/test_constrained_smollm2.py; reports how many replies parse and validate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TOOLS = json.loads((HERE / "data" / "claude_code_tools.json").read_text())["tools"]
LONG_LIST = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {"type": "string", "maxLength": 12},
            "minItems": 200,
        }
    },
    "required": ["items"],
}


def _call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool["name"]}, "arguments": tool["input_schema"]},
        "required": ["name", "arguments"],
    }


async def _throughput(args: argparse.Namespace) -> None:
    import torch
    from cortex_transformers.demo import write_demo_model
    from cortex_transformers.harness import TransformersHarness, TransformersModel

    from cortex.neuron.constraints import JsonAnswer
    from cortex.neuron.harness import LoadOptions, SamplingParams
    from cortex.protocol.neuron import LoadRequest

    torch.set_num_threads(args.threads)
    path = write_demo_model(Path(tempfile.mkdtemp()) / "demo", size=args.size)
    request = LoadRequest(model="demo", source=str(path))
    options = LoadOptions(max_concurrency=args.streams)
    loaded = TransformersHarness().load(request, str(path), "cpu", options, lambda f, s: None)
    assert isinstance(loaded, TransformersModel)
    model: TransformersModel = loaded

    async def one(i: int, constrained: bool) -> int:
        prompt = model.encode_chat([{"role": "user", "content": f"list {i} things"}], None)
        params = SamplingParams(
            max_new_tokens=args.tokens,
            temperature=1.0,
            seed=i,
            ignore_eos=not constrained,
            constraint=JsonAnswer(schema=LONG_LIST) if constrained else None,
        )
        model.prepare(params)
        count = 0
        async for event in model.generate(prompt, params):
            count = event.completion_tokens
        return count

    async def run(constrained: bool) -> float:
        start = time.perf_counter()
        counts = await asyncio.gather(*(one(i, constrained) for i in range(args.streams)))
        seconds = time.perf_counter() - start
        rate = sum(counts) / seconds
        label = "JSON schema" if constrained else "unconstrained"
        print(f"{label:<14} {sum(counts):5d} tokens {seconds:7.2f} s {rate:8.1f} tok/s")
        return rate

    await run(True)  # warm-up: tokenizer set-up and the first compile are not timed
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for constrained in (False, True):
            rates[constrained].append(await run(constrained))
    best = {k: max(v) for k, v in rates.items()}
    print(f"constrained / unconstrained (best of {args.rounds}): {best[True] / best[False]:.2f}x")
    model.unload()


def _smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from cortex import starter

    gguf = starter.fetch()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _compile_llguidance(tokenizer: Any) -> None:
    import llguidance.numpy
    import numpy as np
    from cortex_transformers.grammar import GrammarCache, lark_for

    from cortex.neuron.constraints import ToolCalls, ToolSchema

    cache = GrammarCache(tokenizer, len(tokenizer))
    start = time.perf_counter()
    _ = cache.tokenizer
    print(f"llguidance tokenizer set-up      {1000 * (time.perf_counter() - start):8.1f} ms")
    tools = tuple(ToolSchema(name=t["name"], parameters=t["input_schema"]) for t in TOOLS)
    constraint = ToolCalls(tools=tools, open="<tool_call>", close="</tool_call>", forced=True)
    grammar = lark_for(constraint, cache.literal)
    for label in ("first compile (25 tools)", "cached second use"):
        start = time.perf_counter()
        matcher = cache.matcher(grammar)
        print(f"llguidance {label:<21} {1000 * (time.perf_counter() - start):8.1f} ms")
    text = '<tool_call>\n{"name": "Bash", "arguments": {"command": "ls -la", "timeout": 1000}}'
    ids = tokenizer.encode(text, add_special_tokens=False)
    bitmask = np.zeros((1, (len(tokenizer) + 31) // 32), dtype=np.int32)
    start = time.perf_counter()
    for token in ids:
        llguidance.numpy.fill_next_token_bitmask(matcher, bitmask, 0)
        matcher.consume_token(token)
    per_step = 1000 * (time.perf_counter() - start) / len(ids)
    print(f"llguidance mask + advance        {per_step:8.3f} ms a step ({len(ids)} steps)")


def _compile_xgrammar(tokenizer: Any) -> None:
    import torch
    import xgrammar

    start = time.perf_counter()
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    compiler = xgrammar.GrammarCompiler(info, cache_enabled=True)
    print(f"xgrammar tokenizer set-up        {1000 * (time.perf_counter() - start):8.1f} ms")
    schema = json.dumps({"anyOf": [_call_schema(t) for t in TOOLS]})
    for label in ("first compile (25 tools)", "cached second use"):
        start = time.perf_counter()
        compiled = compiler.compile_json_schema(schema, any_whitespace=False)
        print(f"xgrammar {label:<23} {1000 * (time.perf_counter() - start):8.1f} ms")
    matcher = xgrammar.GrammarMatcher(compiled)
    text = '{"name": "Bash", "arguments": {"command": "ls -la", "timeout": 1000}}'
    ids = tokenizer.encode(text, add_special_tokens=False)
    bitmask = xgrammar.allocate_token_bitmask(1, info.vocab_size)
    logits = torch.zeros(1, info.vocab_size)
    start = time.perf_counter()
    for token in ids:
        matcher.fill_next_token_bitmask(bitmask)
        xgrammar.apply_token_bitmask_inplace(logits, bitmask)
        matcher.accept_token(token)
    per_step = 1000 * (time.perf_counter() - start) / len(ids)
    print(f"xgrammar mask + apply + advance  {per_step:8.3f} ms a step ({len(ids)} steps)")


def _validate(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE.parent))
    import anthropic
    import jsonschema
    import openai

    from tests.e2e import test_constrained_smollm2 as case

    prompts = case.PROMPTS[: args.prompts]
    oai = openai.OpenAI(base_url=args.url + "/v1", api_key=args.key)
    claude = anthropic.Anthropic(base_url=args.url, api_key=args.key, max_retries=0)
    valid = {"openai required": 0, "anthropic any": 0, "json_schema": 0}
    for prompt in prompts:
        messages: Any = [{"role": "user", "content": prompt}]
        reply = oai.chat.completions.create(
            model=args.model, messages=messages, tools=case.TOOLS, tool_choice="required",
            max_tokens=160, temperature=0.2,
        )  # fmt: skip
        for call in reply.choices[0].message.tool_calls or ():
            schema = case.SCHEMAS[call.function.name]
            jsonschema.validate(json.loads(call.function.arguments), schema)
            valid["openai required"] += 1
            break
        tools: Any = [
            {"name": t["function"]["name"], "input_schema": t["function"]["parameters"]}
            for t in case.TOOLS
        ]
        message = claude.messages.create(
            model=args.model, max_tokens=160, messages=messages, tools=tools,
            tool_choice={"type": "any"}, extra_body={"temperature": 0.2},
        )  # fmt: skip
        uses = [b for b in message.content if b.type == "tool_use"]
        for use in uses:
            jsonschema.validate(use.input, case.SCHEMAS[use.name])
        valid["anthropic any"] += bool(uses)
        fmt: Any = {"type": "json_schema", "json_schema": {"name": "a", "schema": case.ANSWER}}
        answer = oai.chat.completions.create(
            model=args.model, messages=messages, response_format=fmt, max_tokens=160,
            temperature=0.2,
        )  # fmt: skip
        jsonschema.validate(json.loads(answer.choices[0].message.content or ""), case.ANSWER)
        valid["json_schema"] += 1
    for label, count in valid.items():
        print(f"{label:<16} {count}/{len(prompts)} parse and validate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    tp = sub.add_parser("throughput")
    tp.add_argument("--size", default="small", choices=["tiny", "small"])
    tp.add_argument("--streams", type=int, default=16)
    tp.add_argument("--tokens", type=int, default=64)
    tp.add_argument("--threads", type=int, default=1)
    tp.add_argument("--rounds", type=int, default=2)
    cp = sub.add_parser("compile")
    cp.add_argument("--lib", default="llguidance", choices=["llguidance", "xgrammar"])
    vp = sub.add_parser("validate")
    vp.add_argument("--url", default="http://127.0.0.1:31313")
    vp.add_argument("--key", default="unused")
    vp.add_argument("--model", default="smollm2-135m-instruct")
    vp.add_argument("--prompts", type=int, default=30)
    args = parser.parse_args()
    if args.what == "throughput":
        asyncio.run(_throughput(args))
    elif args.what == "compile":
        tokenizer = _smollm2_tokenizer()
        (_compile_llguidance if args.lib == "llguidance" else _compile_xgrammar)(tokenizer)
    else:
        _validate(args)


if __name__ == "__main__":
    main()
