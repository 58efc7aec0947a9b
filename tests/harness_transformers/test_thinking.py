"""Reasoning controls in the transformers harness (issue 21): the chat template's thinking
switch, and a thinking budget that closes the think block once it is spent."""

from __future__ import annotations

import msgspec
import pytest
from cortex_transformers.harness import TransformersModel
from cortex_transformers.thinking import ThinkBudget, ThinkTokens

from cortex.neuron.harness import SamplingParams

OPEN, CLOSE, OTHER = 1, 2, 7
TOKENS = ThinkTokens(OPEN, CLOSE)


def test_the_budget_counts_tokens_inside_a_block_then_forces_the_close() -> None:
    budget = ThinkBudget(2, TOKENS, prompt=[OTHER])
    budget.observe(OTHER)  # before the block: free
    budget.observe(OPEN)
    assert budget.forced is None
    budget.observe(OTHER)
    budget.observe(OTHER)
    assert budget.forced == CLOSE
    budget.observe(CLOSE)
    assert budget.forced is None  # the answer is free


@pytest.mark.parametrize(
    ("prompt", "inside"),
    [([OTHER, OPEN], True), ([OPEN, OTHER, CLOSE, OTHER], False), ([OTHER], False)],
)
def test_a_block_the_generation_prompt_opened_counts_from_the_first_token(
    prompt: list[int], inside: bool
) -> None:
    budget = ThinkBudget(0, TOKENS, prompt)
    assert (budget.forced == CLOSE) is inside


def test_the_demo_template_reads_enable_thinking(demo: TransformersModel) -> None:
    assert "enable_thinking" in demo.chat_variables
    messages = [{"role": "user", "content": "hi"}]
    decode = demo._tokenizer.decode
    off = decode(demo.encode_chat(messages, None, variables={"enable_thinking": False}))
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    default = decode(demo.encode_chat(messages, None))
    assert default.endswith("<|im_start|>assistant\n")
    assert decode(demo.encode_chat(messages, None, variables={"enable_thinking": True})) == default


async def test_a_spent_budget_closes_the_think_block(demo: TransformersModel) -> None:
    """Inside an opened block, with the close tag biased away, the model would think until
    max_tokens; with a budget of 5 the sixth token is ``</think>`` and the answer follows."""
    prompt = demo.encode_chat([{"role": "user", "content": "hi"}], None, prefix="<think>\n")
    assert demo._think is not None
    params = SamplingParams(
        max_new_tokens=12,
        temperature=0.0,
        ignore_eos=True,
        logit_bias={demo._think.close_id: -100.0},
        logprobs=0,
        thinking_budget=5,
    )
    tokens = [
        entry.token
        async for event in demo.generate(prompt, params)
        for entry in event.logprobs or []
    ]
    assert len(tokens) == 12
    assert tokens[5] == "</think>" and "</think>" not in tokens[:5]
    unbounded = msgspec.structs.replace(params, thinking_budget=None)
    free = [e.token async for ev in demo.generate(prompt, unbounded) for e in ev.logprobs or []]
    assert "</think>" not in free
