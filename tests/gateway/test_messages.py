"""Context errors in Anthropic's words, from whichever server raised them."""

from __future__ import annotations

import pytest

from cortex.errors import ContextLengthExceeded
from cortex.gateway.dialects.anthropic.routes import as_prompt_too_long

CORTEX = (
    "This model's maximum context length is 4096 tokens. However, your messages resulted in "
    "5000 tokens. Please reduce the length of the messages."
)
VLLM_PROMPT = (
    "This model's maximum context length is 4096 tokens. However, you requested 5100 tokens "
    "(5000 in the messages, 100 in the completion). Please reduce the length of the messages "
    "or completion."
)
VLLM_INPUT = (
    "This model's maximum context length is 4096 tokens. However, your request has 5000 input "
    "tokens. Please reduce the length of the input messages."
)
VLLM_COMPLETION = VLLM_PROMPT.replace("5100 tokens (5000", "35000 tokens (3000").replace(
    "100 in the", "32000 in the"
)


@pytest.mark.parametrize(
    "message", [CORTEX, VLLM_INPUT, VLLM_PROMPT], ids=["cortex", "vllm", "vllm-older"]
)
def test_a_prompt_over_the_context_is_reported_as_claude_code_expects(message: str) -> None:
    err = as_prompt_too_long(ContextLengthExceeded(message))
    assert err.message == "prompt is too long: 5000 tokens > 4096 maximum"
    assert err.status == 400


VLLM_TOO_LARGE = (
    "'max_tokens' or 'max_completion_tokens' is too large: 32000. This model's maximum context "
    "length is 4096 tokens and your request has 3000 input tokens (32000 > 4096 - 3000)."
)


@pytest.mark.parametrize("message", [VLLM_COMPLETION, VLLM_TOO_LARGE, "context too long"])
def test_other_context_errors_pass_through(message: str) -> None:
    err = ContextLengthExceeded(message)
    assert as_prompt_too_long(err) is err
