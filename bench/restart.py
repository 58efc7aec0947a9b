"""Restart to ready: ``make serve``'s launcher (cortex/serve_demo.py) from a cold process to its
first chat answer, with the model already cached (the GGUF fetched and its conversion kept).

Each run starts ``python -m cortex.serve_demo`` on free ports and prints, in seconds from the
spawn: when the launcher printed its banner (the gateway lists the model as resident), and when
the first chat request, sent right after the banner, was answered (``max_tokens`` 8, greedy).
"Ready" is the second: the first answer a user gets. On a shared machine the wall times move with
the load, so each run also gives the CPU seconds the neuron and the gateway had used by then
(from /proc): the work a restart does, whatever else runs. With ``--log`` every line the two
servers print is echoed with its offset, to see where the time goes.

    .venv/bin/python bench/restart.py              # SmolLM2 (fetched once into ~/.cache/cortex)
    .venv/bin/python bench/restart.py --runs 3 --log
    CORTEX_SERVE_MODEL=demo .venv/bin/python bench/restart.py

The first run after a fresh clone also converts the GGUF (~30-60 s); later runs are restarts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BANNER = "cortex is serving"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _chat(url: str, model: str) -> str:
    body = {
        "model": model,
        "temperature": 0,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        answer = json.loads(resp.read())
    return str(answer["choices"][0]["message"]["content"])


def _cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU seconds of each child of ``pid`` (the neuron, the gateway), by role."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        args = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        role = args[args.index(b"--role") + 1].decode() if b"--role" in args else child
        fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        found[role] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return found


def one_run(home: Path, echo: bool, timeout_s: float) -> tuple[float, float, dict[str, float]]:
    """(banner seconds, first answer seconds, CPU seconds by role) from the spawn of one
    ``make serve``."""
    port = _free_port()
    env = {
        **os.environ,
        "CORTEX_DEMO_HOME": str(home),
        "CORTEX_PORT": str(port),
        "CORTEX_METRICS_PORT": str(_free_port()),
        "CORTEX_NEURON_PORT": str(_free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cortex.serve_demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    banner = threading.Event()
    model: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if echo:
                print(f"{time.monotonic() - start:7.2f}  {line.rstrip()}", flush=True)
            if BANNER in line:
                model.append(line.split('"')[1])
                banner.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not banner.wait(timeout_s):
            raise SystemExit(f"no banner within {timeout_s:.0f} s")
        ready = time.monotonic() - start
        text = _chat(f"http://127.0.0.1:{port}", model[0])
        answered = time.monotonic() - start
        cpu = _cpu_seconds(proc.pid)
        if echo:
            print(f"{answered:7.2f}  answer: {text!r}", flush=True)
        return ready, answered, cpu
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="restarts to time (default 2)")
    parser.add_argument("--log", action="store_true", help="echo the servers' log with offsets")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait per run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cortex-restart-") as tmp:
        for run in range(1, args.runs + 1):
            ready, answered, cpu = one_run(Path(tmp), args.log, args.timeout)
            used = ", ".join(f"{role} {seconds:.1f}" for role, seconds in sorted(cpu.items()))
            load = os.getloadavg()[0]
            print(
                f"run {run}: banner {ready:.1f} s, first answer {answered:.1f} s "
                f"(CPU s: {used}; load average {load:.1f})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
