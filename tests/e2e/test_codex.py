"""The real Codex CLI, headless, against a real gateway in front of two real neurons.

Codex speaks only the Responses API (``wire_api = "responses"``); this is the client the
/v1/responses route exists for. Its first request is ~40 KB (developer instructions, twelve
tools of several types, ~18k demo-tokenizer tokens).

- ``gpt-*`` (Codex's own model name) is aliased to the demo model on the transformers harness,
  its context raised above the demo config's 4096 positions (RoPE extends; the weights are
  random anyway). It answers gibberish, which is all the first test needs: a turn that
  completes with an agent message and no error (when the gibberish opens a tool call, the
  grammar makes it a valid call and Codex runs it first: a random model cannot be steered).
- ``coder`` runs on the scripted ``fake`` harness (it says what the test tells it), so the
  second test drives a whole tool loop: the model calls ``exec_command``, Codex runs it and
  sends its output back as a ``function_call_output``, and the model's answer depends on it.

- A Codex-shaped request sent twice (the openai SDK, no binary needed) reports its reused
  prefix as ``input_tokens_details.cached_tokens``, streamed or not.

The binary comes from ``make clients``; without it the Codex CLI tests skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import REPO_ROOT, NeuronProcess
from tests.protocol.test_responses import CODEX_REQUEST

pytestmark = pytest.mark.slow

CODEX = REPO_ROOT / ".venv" / "clients" / "node_modules" / ".bin" / "codex"
KEY = "codex-key"
# Codex warns (as an item of type "error") when it has no metadata for a model name it does
# not ship ("Model metadata for `NAME` not found..."); the run is unaffected. Any other error
# item or error event fails the test.
METADATA_ADVISORY = "Model metadata for `"


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Any, model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    demo: NeuronProcess = start_neuron(name="codex", model_roots=[model_root])
    scripted: NeuronProcess = start_neuron(
        name="scripted",
        model_roots=[model_root],
        module="tests.e2e.scripted_neuron",
        heartbeat_s=0.5,  # well inside the idle limit the prefill test gives Codex
    )
    models = [
        {
            "id": "demo",
            "source": "tiny",
            "context_length": 32768,
            "aliases": ["gpt-*"],
            "nodes": ["codex"],
        },
        {
            "id": "coder",
            "source": "tiny",
            "harness": "fake",
            "context_length": 200_000,
            "tool_parser": "hermes",
            "nodes": ["scripted"],
        },
    ]
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-codex"),
        neurons={"codex": demo, "scripted": scripted},
        models=models,
        api_keys=[KEY],
        log_format="json",
    )
    yield gw
    gw.stop()


def codex_home(path: Path, base_url: str, provider: str = "") -> Path:
    """A CODEX_HOME whose config.toml points Codex at the gateway (docs/clients.md's set-up);
    ``provider``: more lines for its [model_providers.cortex] table."""
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
{provider}"""
    )
    return path


def codex_exec(
    gateway: GatewayProcess, tmp_path: Path, *args: str, provider: str = ""
) -> list[dict[str, Any]]:
    """Run ``codex exec --json ARGS`` in an empty directory; its JSONL events, checked for
    errors: only the metadata advisory may be an error item, no error event, no failed turn."""
    if not CODEX.exists():
        pytest.skip(f"Codex CLI not installed at {CODEX} (run `make clients`)")
    home = codex_home(tmp_path / "codex-home", gateway.url, provider)
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", "--json", *args],
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
    assert kinds.count("turn.completed") == 1
    errors = [e["item"] for e in events if e["type"] == "item.completed"]
    assert all(
        i["message"].startswith(METADATA_ADVISORY) for i in errors if i["type"] == "error"
    ), errors
    return events


def completed(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [
        e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == kind
    ]


def logged_statuses(gateway: GatewayProcess, model: str, session: str) -> list[int]:
    """Statuses of the Responses requests for ``model`` that the gateway logged under
    ``session`` (other tests share the gateway: their requests carry other sessions)."""
    records = [
        json.loads(line)
        for line in gateway.log_text().splitlines()
        if line.startswith("{") and '"dialect":"responses"' in line
    ]
    return [r["status"] for r in records if r["model"] == model and r["session"] == session]


def session_of(events: list[dict[str, Any]]) -> str:
    """Codex's thread id is its prompt_cache_key, which the gateway routes by (hashed)."""
    thread = next(e["thread_id"] for e in events if e["type"] == "thread.started")
    return hashlib.blake2b(thread.encode(), digest_size=8).hexdigest()


def test_codex_exec_completes_a_turn_on_the_demo_model(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    events = codex_exec(gateway, tmp_path, "Say hi")
    messages = [i["text"] for i in completed(events, "agent_message")]
    assert messages and messages[-1].strip()
    usage = next(e["usage"] for e in events if e["type"] == "turn.completed")
    assert usage["input_tokens"] > 10_000 and usage["output_tokens"] > 0
    # The random model may open a tool call (the demo tokenizer has <tool_call> as one token);
    # the grammar then makes it a valid call of one of Codex's tools, which Codex runs before
    # it asks again: one or more requests, every one answered.
    statuses = logged_statuses(gateway, "demo", session_of(events))
    assert statuses and set(statuses) == {200}


def test_codex_runs_a_tool_and_answers_from_its_output(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    # The scripted model calls exec_command; the command prints "user: say:Done." (spelled so
    # that the prompt itself does not contain it), and the fake answers from the last
    # "user: say:" it sees: "Done." can only come from the function_call_output of turn two.
    call = {"name": "exec_command", "arguments": {"cmd": "printf 'us%sr: say:Done.' e"}}
    prompt = f"say:<tool_call>\\n{json.dumps(call)}\\n</tool_call>"
    # Codex's sandbox needs kernel features CI containers may lack; the command only prints.
    events = codex_exec(
        gateway, tmp_path, "-m", "coder", "--dangerously-bypass-approvals-and-sandbox", prompt
    )
    [command] = completed(events, "command_execution")
    assert command["exit_code"] == 0 and command["aggregated_output"] == "user: say:Done."
    assert [i["text"] for i in completed(events, "agent_message")] == ["Done."]
    assert logged_statuses(gateway, "coder", session_of(events)) == [200, 200]


def test_a_prefill_longer_than_codex_idle_limit_completes_the_turn(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    """Codex fails a stream silent for ``stream_idle_timeout_ms`` and SSE comments do not
    count; the gateway's response.in_progress events during the prefill do. Here the model is
    silent 4 s (as a long prefill is) against a 2 s limit, then answers."""
    events = codex_exec(
        gateway,
        tmp_path,
        "-m",
        "coder",
        "wait:4 say:Done.",
        provider="stream_idle_timeout_ms = 2000\n",
    )
    assert [i["text"] for i in completed(events, "agent_message")] == ["Done."]


def test_a_repeated_codex_prompt_reports_cached_tokens(gateway: GatewayProcess) -> None:
    body = json.loads(CODEX_REQUEST)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0)
    request: dict[str, Any] = {
        "model": "gpt-5.1-codex",
        "instructions": f"session {uuid.uuid4()}",  # a prefix no other test has cached
        "input": body["input"],
        "tools": body["tools"],
        "max_output_tokens": 4,
        "temperature": 0,
    }
    first = client.responses.create(**request)
    assert first.usage is not None and first.usage.input_tokens > 500
    assert first.usage.input_tokens_details.cached_tokens == 0
    with client.responses.stream(**request) as stream:
        last = list(stream)[-1]
    # Four tokens: completed if the model stopped in time, else cut at the ceiling.
    assert last.type in ("response.completed", "response.incomplete")
    second = last.response
    assert second.usage is not None and second.usage.input_tokens == first.usage.input_tokens
    # Everything but the last, partly filled KV block came from the neuron's prefix cache.
    cached = second.usage.input_tokens_details.cached_tokens
    assert first.usage.input_tokens - 64 <= cached < first.usage.input_tokens
