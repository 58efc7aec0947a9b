"""Start real neuron processes on loopback for end-to-end tests (the gateway e2e tests too).

    neuron = NeuronProcess.start(workdir, model_roots=[root], models=[{"id": "tiny", ...}],
                                 preload=["tiny"], token="t")
    neuron.url, neuron.token, neuron.api("GET", "/status"), neuron.log_text()
    neuron.stop()

``start`` writes neuron.toml (and models.toml) into ``workdir``, runs ``python -m cortex --role
neuron`` on a free port and returns once ``/health`` answers (polling, never a blind sleep); it
raises with the log tail if the process dies first. ``stop`` sends SIGTERM, waits, then kills
and reaps: no process outlives its fixture. Synchronous, so fixtures of any scope can use it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

READY_TIMEOUT_S = 90.0
REPO_ROOT = Path(__file__).resolve().parents[2]
TomlValue = str | int | float | bool | list[str] | Mapping[str, float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers_health(proc: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    """Whether the server at ``url`` answers GET /health within ``timeout`` seconds (False as
    soon as its process exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    return False


class Server(Protocol):
    """A server process under test (NeuronProcess, GatewayProcess)."""

    def wait_ready(self) -> bool: ...

    def stop(self) -> None: ...

    def log_text(self) -> str: ...


S = TypeVar("S", bound=Server)


def started(launch: Callable[[], S], what: str) -> S:
    """``launch()`` until its server answers: a port taken between probing and binding gets
    another try (three in all); any other failure raises with the log's tail."""
    for attempt in range(3):
        server = launch()
        if server.wait_ready():
            return server
        server.stop()
        if "address already in use" not in server.log_text().lower() or attempt == 2:
            raise RuntimeError(f"{what} did not start:\n{server.log_text()[-4000:]}")
    raise AssertionError("unreachable")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, wait, then kill and reap: no process outlives its fixture."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def toml_table(name: str, values: Mapping[str, TomlValue]) -> str:
    """One TOML table from flat values (JSON string/array syntax is valid TOML for these; a
    mapping of numbers becomes an inline table)."""
    lines = [f"[{name}]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: TomlValue) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


class NeuronProcess:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, token: str, log: Path) -> None:
        self.proc, self.url, self.token, self.log = proc, url, token, log

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        model_roots: Iterable[Path | str],
        token: str = "e2e-token",
        models: Iterable[Mapping[str, TomlValue]] = (),
        preload: Iterable[str] = (),
        name: str = "e2e-neuron",
        env: Mapping[str, str] | None = None,
        module: str = "cortex",
        **neuron: TomlValue,
    ) -> NeuronProcess:
        """``neuron`` holds further ``[neuron]`` keys (cpu_memory_budget_gb=2, ...); ``module``
        is what ``python -m`` runs (tests.e2e.scripted_neuron adds the scripted test double)."""
        workdir.mkdir(parents=True, exist_ok=True)
        models, preload, model_roots = list(models), list(preload), list(model_roots)

        def launch() -> NeuronProcess:
            port = free_port()
            section: dict[str, TomlValue] = {
                "name": name,
                "listen": f"127.0.0.1:{port}",
                "token": token,
                "model_roots": [str(r) for r in model_roots],
                "torch_threads": 1,
                **neuron,
            }
            if models:
                section["models"] = "models.toml"
                text = "".join(toml_table("[models]", m) for m in models)  # [[models]]
                (workdir / "models.toml").write_text(text)
            config = workdir / "neuron.toml"
            config.write_text(
                f"preload = {json.dumps(list(preload))}\n" + toml_table("neuron", section)
            )
            log = workdir / f"neuron-{port}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", module, "--role", "neuron", "--config", str(config)],
                    cwd=REPO_ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                )
            return cls(proc, f"http://127.0.0.1:{port}", token, log)

        return started(launch, "neuron")

    def wait_ready(self) -> bool:
        return answers_health(self.proc, self.url, READY_TIMEOUT_S)

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One authenticated JSON call; returns (status, decoded body) for errors too."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> Any:
        """Poll /status until ``predicate(status)`` is truthy; returns that status."""
        deadline = time.monotonic() + timeout
        while True:
            _, status = self.api("GET", "/status")
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"neuron status never matched: {status}")
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        stop_process(self.proc, timeout)
