"""Session affinity end to end: two real neurons, the model resident on both, one gateway.

Six conversations of three turns each: four carry Claude Code's
``x-claude-code-session-id``, two carry nothing (the gateway keys them by their opening). Every
turn of a session must land on the node its first turn used (that node holds its prefix in
cache), and the sessions must spread over both nodes. Which node served is read from the
gateway's request log, where operators see it too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess

pytestmark = pytest.mark.slow

MODEL = {"id": "coder", "source": "tiny", "harness": "transformers", "context_length": 2048}
HEADERS = {"anthropic-version": "2023-06-01"}
SESSIONS: list[str | None] = [
    "0b7e9d2c-5b1e-4f8e-9a51-2f0c1d6e7a10",
    "5d2f8a41-93c7-4e02-8d6b-7c1e0f3a9b22",
    "a3c61e07-2d94-4b8f-b1e5-96d0c4f7e833",
    "e8f04b19-7a36-4c5d-a2f1-3b9e8d0c6f44",
    None,
    None,
]
TURNS = 3


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Any, model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    neurons: dict[str, NeuronProcess] = {
        name: start_neuron(
            name=name,
            model_roots=[model_root],
            models=[MODEL],
            preload=["coder"],
            harnesses=["transformers"],
            cpu_memory_budget_gb=1.0,
        )
        for name in ("n1", "n2")
    }
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-sessions"),
        neurons=neurons,
        models=[{**MODEL, "aliases": ["claude-*"]}],
        log_format="json",
    )
    gw.wait_for(lambda p: p.get("coder") == ["n1", "n2"], timeout=60)
    yield gw
    gw.stop()


class Conversation:
    def __init__(self, i: int, session: str | None) -> None:
        self.headers = {"x-claude-code-session-id": session} if session else {}
        self.messages: list[dict[str, Any]] = [
            {"role": "user", "content": f"task {i}: fix the parser"}
        ]

    async def turn(self, http: aiohttp.ClientSession) -> None:
        body = {
            "model": "claude-sonnet-4-5-20250929",
            "max_tokens": 4,
            "system": [{"type": "text", "text": "You are a coding agent."}],
            "messages": self.messages,
        }
        async with http.post("/v1/messages?beta=true", json=body, headers=self.headers) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        text = "".join(b.get("text", "") for b in answer["content"]) or "ok"
        self.messages += [
            {"role": "assistant", "content": text},
            {"role": "user", "content": f"turn {len(self.messages) // 2 + 1}: go on"},
        ]


async def test_each_session_stays_on_one_node_and_both_nodes_serve(
    gateway: GatewayProcess,
) -> None:
    """First turns side by side, later turns one at a time: least-busy routing alone would
    move every later turn to the first node by name (all idle), so staying is affinity's work."""
    conversations = [Conversation(i, s) for i, s in enumerate(SESSIONS)]
    async with aiohttp.ClientSession(gateway.url, headers=HEADERS) as http:
        await asyncio.gather(*(c.turn(http) for c in conversations))
        for _ in range(TURNS - 1):
            for c in conversations:
                await c.turn(http)
    lines = [json.loads(line) for line in gateway.log_text().splitlines() if '"request"' in line]
    nodes: dict[str, set[str]] = {}
    for line in lines:
        assert line["status"] == 200
        nodes.setdefault(line["session"], set()).add(line["node"])
    assert len(nodes) == len(SESSIONS) and len(lines) == len(SESSIONS) * TURNS
    assert all(len(served) == 1 for served in nodes.values()), nodes
    assert set().union(*nodes.values()) == {"n1", "n2"}, nodes
