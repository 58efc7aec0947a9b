"""What a model is loaded for, and the one refusal when a route asks it for something else.

A models.toml entry's ``task`` travels in the LoadRequest to the harness; the gateway checks it
against its catalogue entry before routing (no load for a request that cannot be served) and the
neuron against the loaded model (a direct call, or an entry the gateway does not know).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from cortex.errors import InvalidRequest

Task = Literal["generate", "embed"]

SERVES: Final[Mapping[Task, str]] = {
    "generate": "chat and text completions",
    "embed": "/v1/embeddings",
}


def check_task(model_id: str, task: Task, wanted: Task) -> None:
    """InvalidRequest (400, param "model") naming the model's task when ``wanted`` differs."""
    if task != wanted:
        raise InvalidRequest(
            f'model {model_id} has task = "{task}": it serves {SERVES[task]} only, '
            f"not {SERVES[wanted]}",
            param="model",
        )
