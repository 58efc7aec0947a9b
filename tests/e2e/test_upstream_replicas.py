"""Several [[upstreams]] serving one model id: they share its traffic, and one dying loses no
request that had not started.

The upstreams are the mock OpenAI server (a test double for a vLLM or SGLang head node), each
served from its own thread; the gateway is a real process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.threaded_server import ThreadedServer
from tests.gateway.mock_upstream import MockState, make_mock_upstream

pytestmark = pytest.mark.slow


@pytest.fixture
def replicas(
    tmp_path: Path,
) -> Iterator[tuple[GatewayProcess, list[MockState], list[ThreadedServer]]]:
    states = [MockState(), MockState()]
    servers = [ThreadedServer(make_mock_upstream(s)) for s in states]
    gw = GatewayProcess.start(
        tmp_path,
        neurons={},
        models=[],
        upstreams=[{"name": f"r{i}", "endpoint": s.url} for i, s in enumerate(servers)],
    )
    yield gw, states, servers
    gw.stop()
    for server in servers:
        server.stop()


def test_replicas_share_traffic_and_a_dead_one_is_skipped_before_the_first_byte(
    replicas: tuple[GatewayProcess, list[MockState], list[ThreadedServer]],
) -> None:
    gw, states, servers = replicas
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    messages: list = [{"role": "user", "content": "hi"}]

    # Sequential requests see equal in-flight counts, so sessions spread them by hash.
    for i in range(12):
        client.chat.completions.create(
            model="mock-gpt", messages=messages, user=f"session-{i}", max_tokens=4
        )
    assert all(len(s.requests) >= 2 for s in states), [len(s.requests) for s in states]

    # One replica dies between polls: every new request still succeeds, on the other.
    servers[0].stop()
    before = len(states[1].requests)
    for i in range(6):
        done = client.chat.completions.create(
            model="mock-gpt", messages=messages, user=f"session-{i}", max_tokens=4
        )
        assert done.choices[0].message.content == "Hello from the mock."
    assert len(states[1].requests) == before + 6
