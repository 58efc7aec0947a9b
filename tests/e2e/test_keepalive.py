"""A long prefill is not a silent stream in any dialect, end to end.

A real gateway in front of a real neuron process whose harness is the scripted ``fake`` test
double: ``wait:0.6`` keeps it silent 0.6 s before its first token, as a long prompt's prefill
does, while the neuron sends a heartbeat every 0.05 s. Anthropic clients must see them as
``ping`` events, Responses clients (Codex) as ``response.in_progress`` events (Codex's idle
timer skips comments), and both SDKs must read the stream.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess

pytestmark = pytest.mark.slow

SILENT = "wait:0.6"


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Any, model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    neuron: NeuronProcess = start_neuron(
        name="slow", model_roots=[model_root], module="tests.e2e.scripted_neuron", heartbeat_s=0.05
    )
    model = {"id": "coder", "source": "tiny", "harness": "fake", "aliases": ["claude-*"]}
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-keepalive"), neurons={"slow": neuron}, models=[model]
    )
    yield gw
    gw.stop()


def _stream(gateway: GatewayProcess, path: str, body: dict[str, Any]) -> str:
    request = urllib.request.Request(
        gateway.url + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def test_anthropic_clients_get_pings_until_the_first_token(gateway: GatewayProcess) -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 3,
        "stream": True,
        "messages": [{"role": "user", "content": SILENT}],
    }
    text = _stream(gateway, "/v1/messages", body)
    head, _, tail = text.partition("event: content_block_start")
    assert head.startswith("event: message_start\n")
    assert head.count("event: ping\n") >= 4, head  # one after message_start, then heartbeats
    assert ": queued" not in text and "event: message_stop" in tail
    sdk = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    with sdk.messages.stream(
        model="claude-sonnet-4-5", max_tokens=3, messages=body["messages"]
    ) as s:
        assert "".join(s.text_stream) == "ababab"


def test_responses_clients_get_in_progress_events_until_the_first_token(
    gateway: GatewayProcess,
) -> None:
    body = {"model": "coder", "input": SILENT, "max_output_tokens": 3, "stream": True}
    text = _stream(gateway, "/v1/responses", body)
    head, _, tail = text.partition("event: response.output_item.added")
    assert head.count("event: response.in_progress\n") >= 4, head  # one, then heartbeats
    assert ": keep-alive" not in text
    assert "event: response.incomplete" in tail  # three tokens of "ab", cut by the limit
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    events = list(
        sdk.responses.create(model="coder", input=SILENT, max_output_tokens=3, stream=True)
    )
    assert events[-1].type == "response.incomplete"
