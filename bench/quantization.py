"""What ``quantization = "int8"`` / ``"int4"`` (CPU kernels) cost in quality and give in speed.

    .venv/bin/python bench/quantization.py            # SmolLM2-135M-Instruct, 1 thread
    .venv/bin/python bench/quantization.py --threads 2

Loads the starter model (the Q4_1 GGUF ``python -m cortex.starter`` caches) through the harness's
own loading code once per quantization (fp32 "none", "int8", "int4") and reports, one run:

- perplexity on two fixed texts (English prose written for this bench, and the first 4,000
  characters of the standard library's ``textwrap.py`` source), and its ratio to fp32's, with
  every row through the kernels as in a decode step (the lossier path);
- the greedy answers to the end-to-end tests' acceptance prompts, side by side;
- the ms of one forward pass over one new token with 256 tokens of context (transformers' own
  cache), as a rough decode cost, and of one 512-token prefill chunk; the served figures come
  from bench/llamacpp.py.
"""

from __future__ import annotations

import argparse
import inspect
import math
import textwrap
import time

import torch
from cortex_transformers import cpu_quant
from cortex_transformers.loading import load_model, load_tokenizer

from cortex import starter
from cortex.neuron.harness import LoadOptions
from cortex.protocol.neuron import LoadRequest

PROSE = """\
The lighthouse stood at the end of a long spit of rock, and for most of the year the only
visitors were the gulls. Its keeper rose before dawn to trim the wick, polish the lens and write
the weather in a ledger that nobody had asked to read in forty years. In winter the sea came over
the rocks in grey walls and the whole tower hummed; in summer the water was so still that the
light's reflection lay on it like a second beam. People in the town said the keeper was lonely,
but he had the radio, a shelf of books about ships, and a cat that had arrived one autumn on a
fishing boat and refused to leave. When the coast guard finally automated the light, they offered
him a flat in the town with a view of the harbour. He thanked them, packed his ledgers into a
crate, and asked whether the cat could come too. It could. On his first night ashore he stood at
the window until the beam swept across the water, once every twelve seconds, exactly as it always
had, and only then did he go to bed. Hash maps store values under keys by computing a number from
each key and using it to pick a bucket; when two keys land in the same bucket, the map keeps both
and compares them one by one. A good hash function spreads keys evenly, so lookups take about the
same time no matter how many items the map holds. Water evaporates from oceans and lakes, rises
as vapour, cools into clouds and falls again as rain or snow, which flows back to the sea through
rivers and the ground.
"""
ACCEPTANCE = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Why is the sky blue?",
]


def perplexity(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """Every row through the CPU kernels (qmm_kernel's int8 rounding of the input, or bf16 in
    PyTorch's), as a decode step runs: the lossier of the two paths (a prefill chunk of more
    than ``QMM_ROWS`` / ``KERNEL_ROWS`` multiplies in float32)."""
    saved, saved_qmm = dict(cpu_quant.KERNEL_ROWS), cpu_quant.QMM_ROWS
    cpu_quant.KERNEL_ROWS.update(dict.fromkeys(saved, 1 << 30))
    cpu_quant.QMM_ROWS = 1 << 30
    try:
        with torch.inference_mode():
            loss = model(input_ids=ids, labels=ids).loss
    finally:
        cpu_quant.KERNEL_ROWS.update(saved)
        cpu_quant.QMM_ROWS = saved_qmm
    return math.exp(float(loss))


def answer(model: torch.nn.Module, tokenizer: object, question: str, tokens: int) -> str:
    messages = [{"role": "user", "content": question}]
    ids = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=tokens, do_sample=False)  # type: ignore[operator]
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))  # type: ignore[attr-defined]


def step_ms(model: torch.nn.Module, rounds: int = 20) -> float:
    """Median ms of one token's forward pass after a 256-token prompt."""
    ids = torch.randint(100, 1000, (1, 256))
    with torch.inference_mode():
        past = model(input_ids=ids, use_cache=True).past_key_values
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            model(input_ids=ids[:, :1], past_key_values=past, use_cache=True)
            times.append((time.perf_counter() - started) * 1e3)
            past.crop(-1)  # drop the token just added: every pass sees 256 tokens
    return sorted(times)[len(times) // 2]


def prefill_ms(model: torch.nn.Module, rounds: int = 3) -> float:
    """Least ms of one 512-token forward pass (no cache)."""
    ids = torch.randint(100, 1000, (1, 512))
    with torch.inference_mode():
        model(input_ids=ids)
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            model(input_ids=ids)
            times.append((time.perf_counter() - started) * 1e3)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=48, help="greedy tokens per answer")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gguf = str(starter.fetch())
    options = LoadOptions()
    texts = {"prose": PROSE, "textwrap.py": inspect.getsource(textwrap)[:4000]}
    rows: dict[str, dict[str, object]] = {}
    for quantization in ("none", "int8", "int4"):
        request = LoadRequest(model="smollm2", source=gguf, quantization=quantization)  # type: ignore[arg-type]
        tokenizer = load_tokenizer(request, gguf, options)
        model = load_model(request, gguf, "cpu", options)
        row: dict[str, object] = {"MB": model.get_memory_footprint() / 1e6}  # type: ignore[no-untyped-call]
        # Times first: once a kernel has multiplied the whole text in one call (perplexity
        # below, which serving never does), later steps on this box ran up to 1.7x slower.
        row["step_ms"] = step_ms(model)
        row["prefill_ms"] = prefill_ms(model)
        for name, text in texts.items():
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            row[name] = perplexity(model, ids)
        row["answers"] = [answer(model, tokenizer, q, args.tokens) for q in ACCEPTANCE]
        rows[quantization] = row
        print(f"{quantization}: { ({k: v for k, v in row.items() if k != 'answers'}) }", flush=True)
        del model
    base = rows["none"]
    print(f"\nSmolLM2-135M-Instruct (Q4_1 GGUF dequantised), {args.threads} thread(s)\n")
    print(
        "| quantization | weights MB | ppl prose | ppl textwrap.py | decode step ms (256 ctx) "
        "| prefill ms (512 tokens) |"
    )
    print("|---|---|---|---|---|---|")
    for quantization, row in rows.items():
        cells = [f"{row['MB']:.0f}"]
        for key in ("prose", "textwrap.py", "step_ms", "prefill_ms"):
            value, ref = float(row[key]), float(base[key])  # type: ignore[arg-type]
            cells.append(f"{value:.3f} ({value / ref:.3f}x)")
        print(f"| {quantization} | " + " | ".join(cells) + " |")
    for i, question in enumerate(ACCEPTANCE):
        print(f"\n**{question}**\n")
        for quantization, row in rows.items():
            reply = row["answers"][i].strip().replace("\n", " ")  # type: ignore[index]
            print(f"- {quantization}: {reply}")


if __name__ == "__main__":
    main()
