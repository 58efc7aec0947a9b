"""The real Gemini CLI (npm ``@google/gemini-cli``, headless) against cortex's Gemini dialect.

Skipped unless the CLI is installed (``make clients`` puts it under .venv/clients, or set
GEMINI_CLI to its path). The model is the scripted ``fake`` test double: the last ``user: say:``
line of the prompt it is shown decides what it answers, so a turn and a tool round trip can be
scripted (as the Claude Code test does).
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

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
GEMINI = Path(os.environ.get("GEMINI_CLI", REPO_ROOT / ".venv/clients/node_modules/.bin/gemini"))
KEY = "gemini-cli-key"
MODEL = {
    "id": "scripted",
    "source": "tiny",
    "harness": "fake",
    "context_length": 1_000_000,
    "tool_parser": "hermes",
    "aliases": ["gemini-*"],
}


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Any, model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    if not GEMINI.exists():
        pytest.skip(f"Gemini CLI is not installed at {GEMINI} (run `make clients`)")
    neuron: NeuronProcess = start_neuron(
        name="gemini-cli", model_roots=[model_root], module="tests.e2e.scripted_neuron"
    )
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-gemini-cli"),
        neurons={"gemini-cli": neuron},
        models=[MODEL],
        api_keys=[KEY],
    )
    yield gw
    gw.stop()


def gemini(home: Path, gateway: GatewayProcess, prompt: str, *args: str) -> dict[str, Any]:
    """One headless run; returns its JSON result."""
    settings = home / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(
        json.dumps(
            {
                "security": {"auth": {"selectedType": "gemini-api-key"}},
                "privacy": {"usageStatisticsEnabled": False},
                "telemetry": {"enabled": False},
            }
        )
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GEMINI_API_KEY": KEY,
        "GOOGLE_GEMINI_BASE_URL": gateway.url,
        "GEMINI_CLI_NO_RELAUNCH": "true",
    }
    # An explicit model skips the CLI's model router, a JSON classifier request per turn that a
    # scripted model cannot answer (the CLI retries it five times with back-off, then goes on).
    argv = [str(GEMINI), "-p", prompt, "-m", "gemini-2.5-flash", "--output-format", "json"]
    argv += ["--skip-trust", *args]
    done = subprocess.run(argv, env=env, cwd=home, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def test_real_gemini_cli_completes_a_turn(gateway: GatewayProcess, tmp_path: Path) -> None:
    result = gemini(tmp_path, gateway, "user: say:Hello from cortex.")
    assert result["response"].strip() == "Hello from cortex.", result


def test_real_gemini_cli_runs_a_tool_and_answers_from_its_output(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    """The scripted model asks for run_shell_command; the command prints "user: say:Done."
    (spelled so the prompt does not contain it), so the second answer can only come from the
    tool's output."""
    call = {"name": "run_shell_command", "arguments": {"command": "printf 'us%sr: say:Done.' e"}}
    prompt = f"user: say:<tool_call>\\n{json.dumps(call)}\\n</tool_call>"
    result = gemini(tmp_path, gateway, prompt, "--yolo")
    assert result["response"].strip().startswith("Done."), result
