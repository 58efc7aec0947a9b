"""The devices a neuron offers: NVIDIA GPUs through NVML, or one ``cpu`` device as fallback.

Without NVML (no driver, no library) or without a GPU, the neuron logs one line and offers a
``cpu`` device whose total is ``cpu_memory_budget_gb`` and whose free memory is that budget
minus what resident (and loading) models hold: a budget, not a measurement, because the host's
RAM is shared with everything else on it.
"""

from __future__ import annotations

import contextlib
import logging
from types import ModuleType
from typing import Any

import pynvml

from cortex.protocol.neuron import DeviceStatus

log = logging.getLogger(__name__)


class Devices:
    """Owns the NVML session. ``snapshot`` is cheap (microseconds per GPU) and non-blocking."""

    def __init__(self, cpu_budget_bytes: int, nvml: ModuleType = pynvml) -> None:
        self._nvml = nvml
        self._cpu_budget = cpu_budget_bytes
        self._handles: list[Any] = []
        self._live = False
        try:
            nvml.nvmlInit()
            self._live = True
            self._handles = [
                nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())
            ]
        except nvml.NVMLError as exc:
            log.info("NVML unavailable (%s); offering the cpu device only", exc)
            return
        if not self._handles:
            log.info("NVML found no GPU; offering the cpu device only")
            self.close()

    def snapshot(self, cpu_committed_bytes: int) -> list[DeviceStatus]:
        """Every device with its memory now; ``cpu_committed_bytes`` is what models hold on cpu."""
        if not self._handles:
            free = max(self._cpu_budget - cpu_committed_bytes, 0)
            return [
                DeviceStatus(
                    id="cpu",
                    kind="cpu",
                    index=0,
                    name="cpu",
                    total_bytes=self._cpu_budget,
                    free_bytes=free,
                    used_bytes=self._cpu_budget - free,
                )
            ]
        return [self._gpu(i, handle) for i, handle in enumerate(self._handles)]

    def close(self) -> None:
        """Idempotent."""
        if self._live:
            self._live = False
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
        self._handles = []

    def _gpu(self, index: int, handle: Any) -> DeviceStatus:
        nvml = self._nvml
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            utilization: float | None = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nvml.NVMLError:
            utilization = None
        return DeviceStatus(
            id=f"cuda:{index}",
            kind="cuda",
            index=index,
            name=_text(nvml.nvmlDeviceGetName(handle)),
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            total_bytes=int(mem.total),
            free_bytes=int(mem.free),
            used_bytes=int(mem.used),
            utilization=utilization,
        )


def _text(value: str | bytes) -> str:
    """Old pynvml returns bytes, new returns str."""
    return value.decode() if isinstance(value, bytes) else value
