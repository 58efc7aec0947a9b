"""Start a real gateway process on loopback in front of real neurons, for end-to-end tests.

gw = GatewayProcess.start(workdir, neurons={"n1": neuron1, ...}, models=[{...}], eviction={...})
gw.url, gw.call("GET", "/cortex/status"), gw.log_text(), gw.wait_for_log(...), gw.stop()
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tests.e2e.neuron_process import (
    NeuronProcess,
    TomlValue,
    answers_health,
    free_port,
    started,
    stop_process,
    toml_table,
)

READY_TIMEOUT_S = 30.0


class GatewayProcess:
    def __init__(
        self, proc: subprocess.Popen[bytes], url: str, metrics_url: str, log: Path
    ) -> None:
        self.proc, self.url, self.metrics_url, self.log = proc, url, metrics_url, log

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        neurons: Mapping[str, NeuronProcess],
        models: Iterable[Mapping[str, TomlValue]],
        eviction: Mapping[str, TomlValue] | None = None,
        upstreams: Iterable[Mapping[str, TomlValue]] = (),
        **gateway: TomlValue,
    ) -> GatewayProcess:
        workdir.mkdir(parents=True, exist_ok=True)
        models, upstreams = list(models), list(upstreams)
        return started(
            lambda: cls._launch(workdir, neurons, models, eviction, upstreams, gateway), "gateway"
        )

    @classmethod
    def _launch(
        cls,
        workdir: Path,
        neurons: Mapping[str, NeuronProcess],
        models: Iterable[Mapping[str, TomlValue]],
        eviction: Mapping[str, TomlValue] | None,
        upstreams: Iterable[Mapping[str, TomlValue]],
        gateway: Mapping[str, TomlValue],
    ) -> GatewayProcess:
        port, metrics_port = free_port(), free_port()
        section: dict[str, TomlValue] = {
            "listen": f"127.0.0.1:{port}",
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "models": "models.toml",
            "poll_interval_s": 0.5,
            **gateway,
        }
        text = toml_table("gateway", section)
        text += toml_table("eviction", {"min_resident_s": 0.0, **(eviction or {})})
        for name, neuron in neurons.items():
            text += toml_table(
                "[neurons]", {"name": name, "endpoint": neuron.url, "token": neuron.token}
            )
        text += "".join(toml_table("[upstreams]", u) for u in upstreams)
        (workdir / "cortex.toml").write_text(text)
        (workdir / "models.toml").write_text("".join(toml_table("[models]", m) for m in models))
        log = workdir / f"gateway-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cortex",
                    "--role",
                    "gateway",
                    "--config",
                    str(workdir / "cortex.toml"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ},
            )
        return cls(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}", log)

    def wait_ready(self) -> bool:
        return answers_health(self.proc, self.url, READY_TIMEOUT_S)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def placements(self) -> dict[str, list[str]]:
        """model id -> nodes where it is loaded, from the admin status."""
        _, status = self.call("GET", "/cortex/status")
        return {
            m["id"]: sorted(p["node"] for p in m["placements"] if p["state"] == "loaded")
            for m in status["models"]
        }

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> dict[str, list[str]]:
        deadline = time.monotonic() + timeout
        while True:
            placements = self.placements()
            if predicate(placements):
                return placements
            if time.monotonic() > deadline:
                raise TimeoutError(f"placements never matched: {placements}")
            time.sleep(0.1)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, *lines: str, timeout: float = 20.0) -> str:
        """Wait until the log holds one of ``lines``; returns the first one found."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            for line in lines:
                if line in text:
                    return line
            if time.monotonic() > deadline:
                raise TimeoutError(f"none of {lines} in the log:\n{text[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)
