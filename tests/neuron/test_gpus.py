"""The NVML path against a named test double of the pynvml module."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from cortex.neuron.gpus import Devices

GB = 1_000_000_000


class FakeNVMLError(Exception):
    pass


class FakeNVML:
    """Just the pynvml calls gpus.py makes; ``gpus`` lists (name, total, used) per GPU."""

    NVMLError = FakeNVMLError

    def __init__(self, gpus: list[tuple[str, int, int]], *, missing: bool = False) -> None:
        self.gpus, self.missing, self.shutdowns = gpus, missing, 0

    def nvmlInit(self) -> None:
        if self.missing:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return self.gpus[h][0].encode()  # old pynvml returns bytes

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h}"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        _, total, used = self.gpus[h]
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        if h == 1:
            raise FakeNVMLError("Not Supported")
        return SimpleNamespace(gpu=37)


def test_gpus_are_listed_with_memory_and_utilisation() -> None:
    nvml = FakeNVML([("NVIDIA H100", 80 * GB, 10 * GB), ("NVIDIA L4", 24 * GB, 0)])
    devices = Devices(8 * GB, nvml=nvml)  # type: ignore[arg-type]
    first, second = devices.snapshot(cpu_committed_bytes=0)
    assert (first.id, first.kind, first.name, first.uuid) == (
        "cuda:0",
        "cuda",
        "NVIDIA H100",
        "GPU-0",
    )
    assert (first.total_bytes, first.free_bytes, first.used_bytes) == (80 * GB, 70 * GB, 10 * GB)
    assert first.utilization == 37.0
    assert (second.id, second.utilization) == ("cuda:1", None)
    devices.close()
    devices.close()
    assert nvml.shutdowns == 1


def test_without_nvml_a_cpu_device_has_the_budget(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        devices = Devices(8 * GB, nvml=FakeNVML([], missing=True))  # type: ignore[arg-type]
    (cpu,) = devices.snapshot(cpu_committed_bytes=3 * GB)
    assert (cpu.id, cpu.kind, cpu.total_bytes, cpu.free_bytes, cpu.used_bytes) == (
        "cpu",
        "cpu",
        8 * GB,
        5 * GB,
        3 * GB,
    )
    assert "NVML unavailable" in caplog.text


def test_nvml_without_gpus_falls_back_to_cpu_and_shuts_nvml_down() -> None:
    nvml = FakeNVML([])
    devices = Devices(GB, nvml=nvml)  # type: ignore[arg-type]
    assert [d.id for d in devices.snapshot(0)] == ["cpu"]
    assert nvml.shutdowns == 1


def test_real_pynvml_without_a_gpu_falls_back_to_cpu() -> None:
    devices = Devices(GB)
    assert devices.snapshot(0)[0].kind in {"cpu", "cuda"}
    devices.close()
