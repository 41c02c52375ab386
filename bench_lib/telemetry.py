"""Readings from NVML (nvidia-ml-py, module `pynvml`): the GPU inventory of the fingerprint, and
per-group telemetry (clocks, temperature, clock-event reasons, utilization, this process's
memory, other processes) and energy. The NVML module is injectable so that tests run against a
fake; without NVML or a GPU every reading is empty, never invented."""

from __future__ import annotations

import itertools
import os
import threading
import time
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


# Clock-event ("throttle") reason bits, as pynvml's nvmlClocksEventReason* constants name them.
THROTTLE_REASONS = (
    (0x1, "gpu_idle"),
    (0x2, "app_clocks"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal"),
    (0x40, "hw_thermal"),
    (0x80, "hw_power_brake"),
    (0x100, "display_clocks"),
)
# Reasons that mean the GPU ran slower than it could while working (idle is not one).
SLOWDOWNS = {"sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake"}


def throttle_names(mask: int) -> str:
    """`"none"`, or the reasons in a clock-event mask joined by `|` (unknown bits in hex)."""
    names = [name for bit, name in THROTTLE_REASONS if mask & bit]
    unknown = mask & ~sum(bit for bit, _ in THROTTLE_REASONS)
    if unknown:
        names.append(hex(unknown))
    return "|".join(names) or "none"


def _reading(fn: Any, *args: Any) -> Any:
    """`fn(*args)`, or None where NVML does not support it on this GPU (or fails)."""
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - NVMLError_NotSupported and kin: an empty column
        return None


@dataclass(frozen=True)
class GpuSnapshot:
    """NVML readings at one moment (None where NVML cannot tell)."""

    throttle: str | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    temperature_c: int | None
    power_w: float | None
    util_percent: int | None
    process_memory_bytes: int | None
    other_processes: int | None


class GpuMonitor:
    """NVML telemetry of one GPU as seen from this process: snapshots around a group of cases,
    and the energy a piece of work uses."""

    def __init__(self, nvml: Any, handle: Any, pid: int | None = None) -> None:
        self.nvml = nvml
        self.handle = handle
        self.pid = pid if pid is not None else os.getpid()

    @classmethod
    def open(cls, cuda_index: int, nvml: Any | None = None, uuid: str | None = None) -> GpuMonitor | None:
        """The monitor of CUDA device `cuda_index` (matched by UUID where torch gives one, as
        CUDA and NVML may number GPUs differently), or None without NVML."""
        nvml = nvml if nvml is not None else load_nvml()
        if nvml is None:
            return None
        handle = None
        if uuid:
            handle = _reading(
                nvml.nvmlDeviceGetHandleByUUID, uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
            )
        if handle is None:
            handle = _reading(nvml.nvmlDeviceGetHandleByIndex, cuda_index)
        return cls(nvml, handle) if handle is not None else None

    def _processes(self) -> list[Any] | None:
        return _reading(self.nvml.nvmlDeviceGetComputeRunningProcesses, self.handle)

    def snapshot(self) -> GpuSnapshot:
        nvml, h = self.nvml, self.handle
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        mask = _reading(reasons, h) if reasons is not None else None
        power_mw = _reading(nvml.nvmlDeviceGetPowerUsage, h)
        util = _reading(nvml.nvmlDeviceGetUtilizationRates, h)
        procs = self._processes()
        mine = [p for p in procs or [] if p.pid == self.pid]
        if procs is None:
            others = None
        elif mine:
            others = len(procs) - len(mine)
        else:  # a container may show host PIDs: then one of them is this process, if any is
            others = max(0, len(procs) - 1)
        used = [getattr(p, "usedGpuMemory", None) for p in mine]
        return GpuSnapshot(
            throttle=throttle_names(mask) if mask is not None else None,
            sm_clock_mhz=_reading(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_SM),
            mem_clock_mhz=_reading(nvml.nvmlDeviceGetClockInfo, h, nvml.NVML_CLOCK_MEM),
            temperature_c=_reading(nvml.nvmlDeviceGetTemperature, h, nvml.NVML_TEMPERATURE_GPU),
            power_w=power_mw / 1e3 if power_mw is not None else None,
            util_percent=getattr(util, "gpu", None),
            process_memory_bytes=sum(u for u in used if u is not None) if mine and None not in used else None,
            other_processes=others,
        )

    def energy_mj(self) -> int | None:
        """The GPU's energy counter in mJ since the driver loaded (None where unsupported)."""
        return _reading(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.handle)

    def power_w(self) -> float | None:
        mw = _reading(self.nvml.nvmlDeviceGetPowerUsage, self.handle)
        return mw / 1e3 if mw is not None else None


def group_columns(start: GpuSnapshot, end: GpuSnapshot) -> dict[str, Any]:
    """The telemetry columns of every case of a group, from snapshots before and after it."""
    others = [n for n in (start.other_processes, end.other_processes) if n is not None]
    return {
        "gpu_util_percent": end.util_percent,
        "gpu_sm_clock_mhz_start": start.sm_clock_mhz,
        "gpu_sm_clock_mhz_end": end.sm_clock_mhz,
        "gpu_mem_clock_mhz": end.mem_clock_mhz,
        "gpu_temperature_c_start": start.temperature_c,
        "gpu_temperature_c_end": end.temperature_c,
        "gpu_throttle_start": start.throttle,
        "gpu_throttle_end": end.throttle,
        "gpu_process_memory_bytes": end.process_memory_bytes,
        "gpu_other_processes": max(others) if others else None,
    }


@dataclass(frozen=True)
class EnergyReading:
    joules: float
    seconds: float
    calls: int
    method: str  # "counter" (nvmlDeviceGetTotalEnergyConsumption) or "power_samples"


class PowerSampler:
    """Integrates NVML power readings (trapezoid rule) in a thread, where the GPU has no energy
    counter. Coarser than the counter: the power reading is itself averaged by the driver."""

    def __init__(self, read_w: Any, interval_s: float = 0.01, clock: Any = time.perf_counter) -> None:
        self._read, self._interval, self._clock = read_w, interval_s, clock
        self._stop = threading.Event()
        self._points: list[tuple[float, float]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            watts = self._read()
            if watts is not None:
                self._points.append((self._clock(), watts))
            self._stop.wait(self._interval)

    def __enter__(self) -> PowerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        watts = self._read()
        if watts is not None:
            self._points.append((self._clock(), watts))

    @property
    def joules(self) -> float | None:
        p = self._points
        if len(p) < 2:
            return None
        return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in itertools.pairwise(p))


def measure_energy(
    monitor: GpuMonitor,
    fn: Any,
    synchronize: Any,
    min_seconds: float,
    clock: Any = time.perf_counter,
    sampler: Any = None,
) -> EnergyReading | None:
    """Energy used while calling `fn` repeatedly for at least `min_seconds` (whole batches of
    calls, doubling, synchronized before each clock check). None when NVML has neither an
    energy counter nor power readings for this GPU."""
    before = monitor.energy_mj()
    if before is None and monitor.power_w() is None:
        return None
    power = None if before is not None else (sampler or PowerSampler(monitor.power_w, clock=clock))
    calls, batch = 0, 1
    synchronize()
    start = clock()
    if power is not None:
        power.__enter__()
    try:
        while True:
            for _ in range(batch):
                fn()
            calls += batch
            synchronize()
            if clock() - start >= min_seconds:
                break
            batch *= 2
    finally:
        if power is not None:
            power.__exit__(None, None, None)
    seconds = clock() - start
    if before is not None:
        after = monitor.energy_mj()
        if after is None:
            return None
        return EnergyReading((after - before) / 1e3, seconds, calls, "counter")
    joules = power.joules if power is not None else None
    return EnergyReading(joules, seconds, calls, "power_samples") if joules is not None else None


def energy_columns(reading: EnergyReading | None, items_per_call: int) -> dict[str, Any]:
    """`energy_j_per_item`, `gpu_power_w` and `energy_method` of a reading (empty without one)."""
    if reading is None or reading.calls < 1 or reading.seconds <= 0:
        return {}
    return {
        "energy_j_per_item": reading.joules / (reading.calls * items_per_call),
        "gpu_power_w": reading.joules / reading.seconds,
        "energy_method": reading.method,
    }
