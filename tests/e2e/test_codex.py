"""The real Codex CLI, headless, against a real gateway and neuron on the demo model.

Codex speaks only the Responses API (``wire_api = "responses"``); this is the client the
/v1/responses route exists for. Its first request is ~40 KB (developer instructions, twelve
tools of several types, ~18k demo-tokenizer tokens), so the model entry's context is raised
above the demo config's 4096 positions (RoPE extends; the weights are random anyway). The demo
model answers gibberish, which is all this test needs: a turn that completes with an agent
message and no error. The binary comes from ``make clients``; without it the test skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import REPO_ROOT, NeuronProcess

pytestmark = pytest.mark.slow

CODEX = REPO_ROOT / ".venv" / "clients" / "node_modules" / ".bin" / "codex"
KEY = "codex-key"
# Codex warns (as an item of type "error") when it has no metadata for a model name it does
# not ship; the run is unaffected. Any other error item or event fails the test.
METADATA_ADVISORY = "Model metadata for `gpt-5.1-codex` not found."


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Any, model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    if not CODEX.exists():
        pytest.skip(f"Codex CLI not installed at {CODEX} (run `make clients`)")
    neuron: NeuronProcess = start_neuron(name="codex", model_roots=[model_root])
    model = {"id": "demo", "source": "tiny", "context_length": 32768, "aliases": ["gpt-*"]}
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-codex"),
        neurons={"codex": neuron},
        models=[model],
        api_keys=[KEY],
        log_format="json",
    )
    yield gw
    gw.stop()


def codex_home(path: Path, base_url: str) -> Path:
    """A CODEX_HOME whose config.toml points Codex at the gateway (docs/clients.md's set-up)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.toml").write_text(
        f"""model = "gpt-5.1-codex"
model_provider = "cortex"
model_context_window = 32768
check_for_update_on_startup = false

[model_providers.cortex]
name = "cortex"
base_url = "{base_url}/v1"
env_key = "CORTEX_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"""
    )
    return path


def test_codex_exec_completes_a_turn(gateway: GatewayProcess, tmp_path: Path) -> None:
    home = codex_home(tmp_path / "codex-home", gateway.url)
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", "--json", "Say hi"],
        cwd=work,
        env={**os.environ, "CODEX_HOME": str(home), "CORTEX_API_KEY": KEY},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    kinds = [e["type"] for e in events]
    assert "error" not in kinds and "turn.failed" not in kinds, run.stdout[-2000:]
    items = [e["item"] for e in events if e["type"] == "item.completed"]
    assert all(i["message"].startswith(METADATA_ADVISORY) for i in items if i["type"] == "error"), (
        items
    )
    messages = [i["text"] for i in items if i["type"] == "agent_message"]
    assert len(messages) == 1 and messages[0].strip()
    assert kinds.count("turn.completed") == 1
    usage = next(e["usage"] for e in events if e["type"] == "turn.completed")
    assert usage["input_tokens"] > 10_000 and usage["output_tokens"] > 0
    # Codex's thread id is its prompt_cache_key: the gateway routed by it as the session key.
    thread = next(e["thread_id"] for e in events if e["type"] == "thread.started")
    session = hashlib.blake2b(thread.encode(), digest_size=8).hexdigest()
    logged = [
        json.loads(line)
        for line in gateway.log_text().splitlines()
        if line.startswith("{") and '"dialect":"responses"' in line
    ]
    assert [(r["session"], r["status"], r["model"]) for r in logged] == [(session, 200, "demo")]
