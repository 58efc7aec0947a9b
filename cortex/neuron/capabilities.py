"""Refuse, by name, the optional sampling fields a model's harness does not honour (issue 21).

A field is honoured or refused, never accepted and ignored: the harness declares what it does in
``HarnessInfo.sampling`` and this is the one place the neuron holds a request against it (chat
and text completions alike; ``n`` and the thinking budget are chat's alone).
"""

from __future__ import annotations

from cortex.errors import InvalidRequest
from cortex.neuron.constraints import SamplingFeatures
from cortex.neuron.prompt import SamplingRequest
from cortex.protocol import openai


def refuse_unsupported(
    request: SamplingRequest,
    features: SamplingFeatures,
    model_id: str,
    count_field: str = "top_logprobs",
) -> None:
    """``count_field``: the field that asks for alternatives per token (chat's
    ``top_logprobs``, text completions' ``logprobs``)."""
    for field in ("frequency_penalty", "presence_penalty"):
        if getattr(request, field) and not features.penalties:
            raise _refuse(field, "penalties", model_id)
    if request.repetition_penalty not in (None, 1.0) and not features.penalties:
        raise _refuse("repetition_penalty", "penalties", model_id)
    if request.logit_bias and not features.logit_bias:
        raise _refuse("logit_bias", "logit_bias", model_id)
    count = request.logprob_count
    if count is not None and features.max_top_logprobs < 0:
        raise _refuse("logprobs", "logprobs", model_id)
    if (count or 0) > max(features.max_top_logprobs, 0):
        raise InvalidRequest(
            f"{count_field} is at most {max(features.max_top_logprobs, 0)} for {model_id}",
            param=count_field,
        )


def refuse_unsupported_chat(
    request: openai.ChatCompletionRequest, features: SamplingFeatures, model_id: str
) -> None:
    refuse_unsupported(request, features, model_id)
    if request.thinking_token_budget is not None and not features.thinking_budget:
        raise _refuse("thinking_token_budget", "a thinking budget", model_id)
    if request.n > features.max_n:
        raise InvalidRequest(f"n is at most {features.max_n} for {model_id}", param="n")


def _refuse(field: str, what: str, model_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"the harness serving {model_id} does not support {what}; omit {field}", param=field
    )
