"""Throughput of the transformers harness on the demo model: N concurrent requests and one alone.

    python bench/harness_throughput.py [--size tiny|small] [--concurrency 8] [--tokens 64]
        [--threads 1] [--baseline]

Greedy decoding of a random-weight model; a sequence may hit EOS early, so the numbers count
the tokens actually generated. ``--baseline`` also times transformers' own
ContinuousBatchingManager on the same prompts in the same process, for a same-machine comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from cortex_transformers.demo import write_demo_model
from cortex_transformers.harness import TransformersHarness, TransformersModel

from cortex.neuron.harness import LoadOptions, SamplingParams
from cortex.protocol.neuron import LoadRequest


async def _one(model: TransformersModel, prompt: list[int], tokens: int) -> int:
    params = SamplingParams(max_new_tokens=tokens, temperature=0.0)
    count = 0
    async for event in model.generate(prompt, params):
        count = event.completion_tokens
    return count


async def _timed(
    model: TransformersModel, prompts: list[list[int]], tokens: int
) -> tuple[int, float]:
    start = time.perf_counter()
    counts = await asyncio.gather(*(_one(model, p, tokens) for p in prompts))
    return sum(counts), time.perf_counter() - start


def _report(label: str, generated: int, seconds: float) -> None:
    print(f"{label:<34} {generated:5d} tokens {seconds:7.3f} s {generated / seconds:9.1f} tok/s")


def _baseline(model_dir: Path, prompts: list[list[int]], tokens: int) -> None:
    from transformers import AutoModelForCausalLM, ContinuousBatchingConfig, GenerationConfig

    hf: Any = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    config = GenerationConfig(do_sample=False, max_new_tokens=tokens, eos_token_id=-1)
    cbc = ContinuousBatchingConfig(
        num_blocks=64, page_size=64, max_requests_per_batch=16, max_batch_tokens=1024
    )
    manager = hf.init_continuous_batching(generation_config=config, continuous_batching_config=cbc)
    manager.start()
    try:
        for label, batch in (("warm-up", prompts[:1]), ("manager", prompts)):
            start = time.perf_counter()
            ids = [manager.add_request(input_ids=p, max_new_tokens=tokens) for p in batch]
            generated = sum(
                len(manager.get_result(request_id=i, timeout=600).generated_tokens) for i in ids
            )
            if label != "warm-up":
                _report(
                    f"transformers CB manager x{len(batch)}", generated, time.perf_counter() - start
                )
    finally:
        manager.stop(block=True, timeout=10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_demo_model(Path(tmp), size=args.size)
        request = LoadRequest(model="demo", source=str(model_dir))
        options = LoadOptions(torch_threads=args.threads, max_concurrency=args.concurrency)
        model = TransformersHarness().load(
            request, str(model_dir), "cpu", options, lambda f, s: None
        )
        assert isinstance(model, TransformersModel)
        prompts = [
            model.encode_chat([{"role": "user", "content": f"Request {i}: tell me a story."}], None)
            for i in range(args.concurrency)
        ]
        try:
            await _timed(model, prompts[:1], 4)  # warm-up
            _report("harness sequential x1", *await _timed(model, prompts[:1], args.tokens))
            label = f"harness concurrent x{args.concurrency}"
            _report(label, *await _timed(model, prompts, args.tokens))
        finally:
            model.unload()
        if args.baseline:
            _baseline(model_dir, prompts, args.tokens)


if __name__ == "__main__":
    asyncio.run(main())
