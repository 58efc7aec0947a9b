"""The record of one request as it passes through the gateway.

Every face fills one ``Exchange`` as the request goes (model, node, timings, tokens, status);
``Gateway.finish`` reads it once for the log line, the history and the metrics. It belongs to
its request alone: nothing else writes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec

from cortex.gateway.fleet import Claim
from cortex.protocol import openai


class TokenCounts(msgspec.Struct):
    """The counts of any OpenAI usage object (an embedding's has no completion_tokens)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class Exchange:
    """What happened to one request; filled as it goes, read by the log line and metrics."""

    dialect: str
    route: str
    request_id: str = ""
    model: str = ""
    node: str = ""
    session: str | None = None  # affinity key (sessions.session_key), set before Gateway.open
    status: int = 200
    stream: bool = False
    started: float = field(default_factory=time.perf_counter)
    upstream_sent: float | None = None
    first_token: float | None = None
    upstream_done: float | None = None
    finished: float | None = None
    queue_wait_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Chunks that carried output, counted as they are relayed (a neuron sends one per decode
    # step): the completion's size when a stream ends without its usage chunk (a hang-up).
    output_chunks: int = 0
    error: str | None = None
    claim: Claim | None = None  # this request's in-flight count on (model, node)

    def take_usage(self, usage: openai.Usage | TokenCounts | None) -> None:
        if usage is not None:
            self.prompt_tokens = usage.prompt_tokens
            self.completion_tokens = usage.completion_tokens

    def settle_usage(self) -> None:
        """At the end: a stream cut before its usage chunk counts the output it relayed."""
        if not self.completion_tokens:
            self.completion_tokens = self.output_chunks
