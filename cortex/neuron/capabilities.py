"""Refuse, by name, the optional sampling fields a model's harness does not honour (issue 21).

A field is honoured or refused, never accepted and ignored: the harness declares what it does in
``HarnessInfo.sampling`` and this is the one place the neuron holds a request against it.
"""

from __future__ import annotations

from cortex.errors import InvalidRequest
from cortex.neuron.constraints import SamplingFeatures
from cortex.protocol import openai


def refuse_unsupported(
    request: openai.ChatCompletionRequest, features: SamplingFeatures, model_id: str
) -> None:
    def refuse(field: str, what: str) -> InvalidRequest:
        return InvalidRequest(
            f"the harness serving {model_id} does not support {what}; omit {field}", param=field
        )

    for field in ("frequency_penalty", "presence_penalty"):
        if getattr(request, field) and not features.penalties:
            raise refuse(field, "penalties")
    if request.repetition_penalty not in (None, 1.0) and not features.penalties:
        raise refuse("repetition_penalty", "penalties")
    if request.logit_bias and not features.logit_bias:
        raise refuse("logit_bias", "logit_bias")
    if request.logprobs and features.max_top_logprobs < 0:
        raise refuse("logprobs", "logprobs")
    if (request.top_logprobs or 0) > max(features.max_top_logprobs, 0):
        raise InvalidRequest(
            f"top_logprobs is at most {max(features.max_top_logprobs, 0)} for {model_id}",
            param="top_logprobs",
        )
    if request.thinking_token_budget is not None and not features.thinking_budget:
        raise refuse("thinking_token_budget", "a thinking budget")
    if request.n > features.max_n:
        raise InvalidRequest(f"n is at most {features.max_n} for {model_id}", param="n")
