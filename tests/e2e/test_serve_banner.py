"""`make serve`'s banner, pasted as printed: every command it shows runs in bash against the real
servers it started (the demo model, so the test needs no download) and succeeds."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.neuron_process import REPO_ROOT, free_port, stop_process

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 120.0
LAST_LINE = "Ctrl-C stops both processes."


def commands(banner: str) -> list[str]:
    """The banner's commands as a user would copy them: a line indented by two spaces opens a
    command, deeper-indented lines after it continue it."""
    blocks: list[list[str]] = []
    for line in banner.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            blocks.append([line])
        elif line.startswith("    ") and blocks:
            blocks[-1].append(line)
    return ["\n".join(block) for block in blocks]


def _read_banner(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """stdout up to the banner's last line; the log lines before it are kept too."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line.strip() == LAST_LINE:
            return "".join(seen)
    raise AssertionError("make serve printed no banner:\n" + "".join(seen)[-3000:])


@pytest.fixture(scope="module")
def banner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("serve")
    env = {
        **os.environ,
        "CORTEX_SERVE_MODEL": "demo",
        "CORTEX_DEMO_HOME": str(home),
        "CORTEX_PORT": str(free_port()),
        "CORTEX_METRICS_PORT": str(free_port()),
        "CORTEX_NEURON_PORT": str(free_port()),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cortex.serve_demo"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield _read_banner(proc, READY_TIMEOUT_S)
    finally:
        stop_process(proc)  # type: ignore[arg-type]


def _run(command: str) -> str:
    done = subprocess.run(
        ["bash", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{command}\nexit {done.returncode}: {done.stderr}"
    return done.stdout


def test_banner_commands_run_as_printed(banner: str) -> None:
    shown = commands(banner)
    curls = [c for c in shown if c.lstrip().startswith("curl ")]
    status = [c for c in shown if " status --gateway " in c]
    assert len(curls) == 2 and len(status) == 1, shown
    openai_reply = json.loads(_run(curls[0]))
    assert openai_reply["object"] == "chat.completion", openai_reply
    assert openai_reply["usage"]["completion_tokens"] <= 64
    anthropic_reply = json.loads(_run(curls[1]))
    assert anthropic_reply["type"] == "message", anthropic_reply
    fleet = _run(status[0])
    assert "cortex-demo" in fleet and "resident" in fleet


def test_banner_says_how_to_reach_the_venv_cortex(banner: str) -> None:
    (status,) = [c for c in commands(banner) if " status --gateway " in c]
    program = status.split()[0]
    if "/" in program:  # not on PATH: the banner says how to activate the venv
        assert f"source {Path(program).parent / 'activate'}" in banner
