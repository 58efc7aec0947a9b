"""Every curl the docs show, pasted as printed into bash against a real gateway.

The docs write their hosts as a reader has them (``http://gateway:31313``, ``localhost:31313``,
``http://127.0.0.1:31313``); the one rewrite here points those at the test's gateway, and
``<a client key>`` becomes the key that ``$CORTEX_KEY`` also holds. Nothing else of a command
changes. The models the docs name (``qwen3-8b``, ``llama3.2:1b``, ...) are served by the scripted
``fake`` harness (a test double) on one real neuron: what is checked is that each command
reaches its route and gets a well-formed success, not what a model says. A command that sends a
key goes to a gateway with that key set; one that sends none, to a gateway without keys (as the
docs' loopback examples assume). `make serve`'s banner (and README, which shows it) is run by
test_serve_banner.py.

Not run: the docs' other shell lines (``sudo``, ``systemctl``, ``cortex --config /etc/...``,
``journalctl``), which need a provisioned host; their configs are parsed by test_docs.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import REPO_ROOT, NeuronProcess

pytestmark = pytest.mark.slow

KEY = "sk-docs-e2e"
ADMIN_KEY = "sk-docs-admin"
PAGES = sorted((REPO_ROOT / "docs").glob("*.md"))
HOSTS = re.compile(r"(?:https?://)?(?:gateway|localhost|127\.0\.0\.1):31313")
KEY_PLACEHOLDER = "<a client key>"


def curl_commands(text: str) -> list[str]:
    """The curl commands in ``text``'s code blocks as a reader copies them: from a line that
    starts with ``curl`` through its backslash continuations and any lines a single-quoted
    argument spans."""
    found: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].lstrip().startswith("curl "):
                i += 1
                continue
            command = [lines[i]]
            while (command[-1].rstrip().endswith("\\") or "\n".join(command).count("'") % 2) and (
                i + 1 < len(lines)
            ):
                i += 1
                command.append(lines[i])
            found.append("\n".join(command))
            i += 1
    return found


def _documented() -> list[tuple[str, str]]:
    return [
        (f"{page.name}:{n}", command)
        for page in PAGES
        for n, command in enumerate(curl_commands(page.read_text(encoding="utf-8")), 1)
    ]


COMMANDS = _documented()


def _model_names() -> set[str]:
    names: set[str] = set()
    for _, command in COMMANDS:
        names |= set(re.findall(r'"model":\s*"([^"]+)"', command))
    return names


@pytest.fixture(scope="module")
def gateways(
    start_neuron: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[bool, GatewayProcess]]:
    """{True: a gateway with KEY and ADMIN_KEY, False: one with no keys}, one neuron behind
    both serving every model the commands name (the fake reads no weights: an empty file stands
    for them, where the neuron looks for a source's safetensors)."""
    model_root = tmp_path_factory.mktemp("doc-models")
    (model_root / "tiny").mkdir()
    (model_root / "tiny" / "model.safetensors").touch()
    neuron: NeuronProcess = start_neuron(
        name="docs",
        model_roots=[model_root],
        module="tests.e2e.scripted_neuron",
        harnesses=["fake"],  # no torch import: the neuron is up in ~1 s
    )
    models = [
        {"id": name, "source": "tiny", "harness": "fake", "context_length": 8192}
        for name in sorted(_model_names())
    ]
    keyed = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-docs-keyed"),
        neurons={"docs": neuron},
        models=models,
        api_keys=[KEY],
        admin_keys=[ADMIN_KEY],
    )
    open_ = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-docs-open"), neurons={"docs": neuron}, models=models
    )
    yield {True: keyed, False: open_}
    keyed.stop()
    open_.stop()


def test_the_docs_show_curl_commands_and_each_names_a_known_host() -> None:
    """The extraction finds the docs' commands (a guard against a format change hiding them),
    and each one's host is one the rewrite knows."""
    assert len(COMMANDS) >= 6, COMMANDS
    for where, command in COMMANDS:
        assert HOSTS.search(command), f"{where}: no known host in {command!r}"


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_curl_succeeds_as_printed(
    where: str, command: str, gateways: dict[bool, GatewayProcess]
) -> None:
    keyed = KEY_PLACEHOLDER in command or "_KEY" in command
    gateway = gateways[keyed]
    pasted = HOSTS.sub(gateway.url, command).replace(KEY_PLACEHOLDER, KEY)
    env = {**os.environ, "CORTEX_KEY": KEY, "ADMIN_KEY": ADMIN_KEY}
    done = subprocess.run(
        ["bash", "-c", pasted], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, f"{where}\n{pasted}\nexit {done.returncode}: {done.stderr}"
    out = done.stdout
    if out.startswith(("data:", "event:")):  # a stream: it ran to its end
        assert "data: [DONE]" in out or "event: message_stop" in out, out[-500:]
        return
    body = json.loads(out)
    assert "error" not in body and body.get("type") != "error", f"{where}: {body}"
