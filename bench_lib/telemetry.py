"""Readings from NVML (nvidia-ml-py, module `pynvml`). The NVML module is injectable so that
tests run against a fake; without NVML or a GPU every reading is empty, never invented."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    driver: str
    memory_total_bytes: int


def load_nvml() -> Any | None:
    """The initialised `pynvml` module, or None where NVML is missing or has no driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_inventory(nvml: Any | None = None) -> list[GpuInfo]:
    """Name, driver and total memory of every GPU NVML sees ([] without NVML)."""
    nvml = nvml if nvml is not None else load_nvml()
    if nvml is None:
        return []
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    driver=driver,
                    memory_total_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                )
            )
        return gpus
    except Exception:  # noqa: BLE001 - a partial NVML answer is no answer
        return []
