"""``make serve``: the main job on one machine, a neuron with the demo model plus a gateway.

Writes the demo model and three config files under ``.cortex/`` (kept between runs), starts
``cortex --role neuron`` and ``cortex --role gateway`` on loopback as child processes, waits until
the gateway serves the model, prints the URL and a curl to try, and on Ctrl-C (or SIGTERM) stops
both and waits for them. Ports: CORTEX_PORT (31313), CORTEX_METRICS_PORT (31314),
CORTEX_NEURON_PORT (13131); CORTEX_DEMO_SIZE=small for the 64M-parameter model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DEMO_ID = "cortex-demo"
HOME = Path(os.environ.get("CORTEX_DEMO_HOME", ".cortex")).resolve()


def _configs(gateway_port: int, metrics_port: int, neuron_port: int) -> dict[str, str]:
    return {
        "models.toml": f"""\
[[models]]
id = "{DEMO_ID}"
source = "demo-model"
quantization = "none"
vram_gb = 0.5
pinned = true
# Claude Code and other fixed-name clients reach the demo model too.
aliases = ["claude-*", "gpt-*"]
""",
        "neuron.toml": f"""\
[neuron]
name = "local"
listen = "127.0.0.1:{neuron_port}"
model_roots = ["{HOME}"]
cpu_memory_budget_gb = 4.0
torch_threads = 1
""",
        "cortex.toml": f"""\
[gateway]
listen = "127.0.0.1:{gateway_port}"
metrics_listen = "127.0.0.1:{metrics_port}"
models = "models.toml"

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
        time.sleep(0.5)
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


def main() -> int:
    gateway_port = int(os.environ.get("CORTEX_PORT", "31313"))
    metrics_port = int(os.environ.get("CORTEX_METRICS_PORT", "31314"))
    neuron_port = int(os.environ.get("CORTEX_NEURON_PORT", "13131"))
    size = os.environ.get("CORTEX_DEMO_SIZE", "tiny")
    HOME.mkdir(parents=True, exist_ok=True)
    model_dir = HOME / "demo-model"
    if not (model_dir / "config.json").exists():
        print(f"writing the {size} demo model to {model_dir} ...", flush=True)
        from cortex_transformers.demo import write_demo_model

        write_demo_model(model_dir, size=size)  # type: ignore[arg-type]
    for name, text in _configs(gateway_port, metrics_port, neuron_port).items():
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
        if not _wait_ready(url, procs, timeout_s=120):
            print("cortex did not come up; see the log lines above", file=sys.stderr)
            return 1
        print(
            f"""
cortex is serving the demo model "{DEMO_ID}" (random weights: expect gibberish) at {url}

  curl {url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "{DEMO_ID}", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  OpenAI clients:    OPENAI_BASE_URL={url}/v1
  Anthropic clients: ANTHROPIC_BASE_URL={url}
  Fleet:             cortex status --gateway {url}
  Metrics:           http://127.0.0.1:{metrics_port}/metrics

Ctrl-C stops both processes.""",
            flush=True,
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(procs)


if __name__ == "__main__":
    sys.exit(main())
