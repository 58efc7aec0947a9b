"""The real Claude Code through a prefill longer than its stream watchdog: one streamed answer.

Claude Code aborts a stream that sends nothing but ``ping`` for 300 s (its watchdog is
``max(CLAUDE_STREAM_IDLE_TIMEOUT_MS, 300000)`` ms, so no test can set it lower) and resends the
request without streaming. The gateway keeps it alive with ``ping`` for the first minute of a
silent stream and then opens the answer's text block early with empty ``text_delta`` events
(translate.py); this runs the CLI against that for longer than the watchdog. The neuron's
harness is the scripted ``fake`` (a test double): ``wait:320`` keeps it silent 320 s before its
first token, as a long prefill on a slow node does, while the neuron sends its heartbeat every
5 s (its default) and the gateway turns each into an event. Takes ~6 minutes, so it runs only
when asked::

    CORTEX_LONG_CLIENTS=1 .venv/bin/pytest -m longclient tests/e2e/test_claude_code_watchdog.py
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import NeuronProcess
from tests.e2e.test_claude_code import CLAUDE, KEY

pytestmark = [
    pytest.mark.longclient,
    pytest.mark.skipif(
        os.environ.get("CORTEX_LONG_CLIENTS") != "1",
        reason="takes ~6 minutes: run with CORTEX_LONG_CLIENTS=1 (docs/clients.md)",
    ),
]

WATCHDOG_S = 300.0  # Claude Code 2.1.197's floor
SILENT_S = 320.0
HEARTBEAT_S = 5.0  # the neuron's default heartbeat_s


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Any, model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    if not CLAUDE.exists():
        pytest.skip(f"Claude Code is not installed at {CLAUDE} (run `make clients`)")
    neuron: NeuronProcess = start_neuron(
        name="slow",
        model_roots=[model_root],
        module="tests.e2e.scripted_neuron",
        heartbeat_s=HEARTBEAT_S,
    )
    model = {
        "id": "scripted",
        "source": "tiny",
        "harness": "fake",
        "context_length": 400_000,  # one token per character: Claude Code's prompt is ~50 KB
        "aliases": ["claude-*"],
    }
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-watchdog"),
        neurons={"slow": neuron},
        models=[model],
        api_keys=[KEY],
        log_format="json",
    )
    yield gw
    gw.stop()


def test_real_claude_code_gets_its_answer_after_a_prefill_past_its_watchdog(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "ANTHROPIC_BASE_URL": gateway.url,
        "ANTHROPIC_API_KEY": KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    # "user: " first: the fake reads the last "user: " line, and Claude Code puts its own
    # reminder text ahead of the prompt in the user message.
    prompt = f"user: wait:{SILENT_S:g} say:Four."
    argv = [str(CLAUDE), "-p", prompt, "--model", "scripted", "--tools", "Bash"]
    argv += ["--max-turns", "1", "--output-format", "json"]
    done = subprocess.run(
        argv,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SILENT_S + 180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert (result["is_error"], result["result"]) == (False, "Four."), result

    served = [json.loads(line) for line in gateway.log_text().splitlines() if '"request"' in line]
    messages = [r for r in served if r["route"] == "/v1/messages"]
    # Streamed and answered after the watchdog's limit; no drop (499) and no non-streamed resend.
    assert all(r["stream"] and r["status"] == 200 for r in messages), messages
    answer = [r for r in messages if r["duration_s"] > WATCHDOG_S]
    assert len(answer) == 1, messages
