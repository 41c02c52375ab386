"""The one place where CPU and CUDA differ: timing a round, synchronizing, counting peak memory.

Everything device-specific sits behind `Device`; the rest of the library never branches on the
device kind. Clocks and CUDA events are injectable so that the logic is testable without a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bench_lib.errors import UserError
from bench_lib.measure.memory import PeakCounter, StoragePeakTracker
from bench_lib.measure.telemetry import (
    EnergyReading,
    GpuMonitor,
    GpuSnapshot,
    group_columns,
    load_nvml,
    locate_gpu,
    measure_energy,
)

KNOWN_KINDS = ("cpu", "cuda")

Clock = Callable[[], float]


@dataclass(frozen=True)
class RoundTime:
    """Duration of one timed round (all its iterations), in seconds.

    `host_s` is wall time on the host from before the first call until the work is done;
    `device_s` is the time measured on the device itself (CUDA events), None on the CPU.
    """

    host_s: float
    device_s: float | None = None

    @property
    def primary_s(self) -> float:
        """The figure latency statistics use: device time where there is one, else host time."""
        return self.device_s if self.device_s is not None else self.host_s


class Device(Protocol):
    name: str  # what torch calls it: "cpu", "cuda:0"
    kind: str  # "cpu" or "cuda"

    def synchronize(self) -> None: ...

    def time_round(self, fn: Callable[[], object], iterations: int) -> RoundTime: ...

    def peak_counter(self) -> PeakCounter: ...

    def release_memory(self) -> None: ...

    def energy(self, fn: Callable[[], object], min_seconds: float) -> EnergyReading | None: ...

    def telemetry_start(self) -> object: ...

    def telemetry_columns(self, start: object) -> dict[str, Any]: ...


class CpuDevice:
    name = "cpu"
    kind = "cpu"

    def __init__(self, clock: Clock = time.perf_counter) -> None:
        self._clock = clock

    def synchronize(self) -> None:
        pass

    def time_round(self, fn: Callable[[], object], iterations: int) -> RoundTime:
        clock = self._clock
        start = clock()
        for _ in range(iterations):
            fn()
        return RoundTime(host_s=clock() - start)

    def peak_counter(self) -> PeakCounter:
        return StoragePeakTracker()

    def release_memory(self) -> None:
        pass

    def energy(self, fn: Callable[[], object], min_seconds: float) -> EnergyReading | None:
        return None  # no CPU energy counter is read (RAPL needs root on most machines)

    def telemetry_start(self) -> object:
        return None

    def telemetry_columns(self, start: object) -> dict[str, Any]:
        return {}


class CudaDevice:
    """A CUDA device timed with CUDA events: one start/end pair per round, one sync per round.

    The events are recorded on this device's current stream (where its kernels run, whichever
    device is current), the end event after the last call of the round; it is synchronized
    before its elapsed time is read, so the round includes all queued GPU work; there is no
    per-iteration synchronize. `start.elapsed_time(end)` is in milliseconds.
    """

    kind = "cuda"

    def __init__(
        self,
        index: int = 0,
        clock: Clock = time.perf_counter,
        event_factory: Callable[[], Any] | None = None,
        cuda: Any = None,
        monitor: GpuMonitor | None = None,
        nvml: Any = None,
    ) -> None:
        self.index = index
        self.name = f"cuda:{index}"
        self._clock = clock
        self._cuda = cuda if cuda is not None else torch.cuda
        self._event = event_factory or (lambda: self._cuda.Event(enable_timing=True))
        self._nvml = nvml
        self._monitor = monitor
        self._monitor_opened = monitor is not None
        self.telemetry_note = ""  # why NVML telemetry is missing or partial ("" when complete)

    @property
    def monitor(self) -> GpuMonitor | None:
        """NVML telemetry of this device (None without NVML, or when NVML cannot tell which of
        its devices this is: see `telemetry.locate_gpu`), opened on first use."""
        if not self._monitor_opened:
            self._monitor_opened = True
            nvml, why = (self._nvml, "") if self._nvml is not None else load_nvml()
            if nvml is None:
                self.telemetry_note = f"no NVML telemetry: {why}"
                return None
            try:
                uuid = str(self._cuda.get_device_properties(self.index).uuid)
            except (AttributeError, RuntimeError):
                uuid = None
            location, self.telemetry_note = locate_gpu(nvml, uuid)
            self._monitor = GpuMonitor.at(nvml, location) if location is not None else None
        return self._monitor

    def synchronize(self) -> None:
        self._cuda.synchronize(self.index)

    def time_round(self, fn: Callable[[], object], iterations: int) -> RoundTime:
        clock = self._clock
        stream = self._cuda.current_stream(self.index)
        start_event, end_event = self._event(), self._event()
        start = clock()
        start_event.record(stream)
        for _ in range(iterations):
            fn()
        end_event.record(stream)
        end_event.synchronize()
        host_s = clock() - start
        return RoundTime(host_s=host_s, device_s=start_event.elapsed_time(end_event) / 1e3)

    def peak_counter(self) -> PeakCounter:
        return CudaAllocatorPeak(self.index, self._cuda)

    def release_memory(self) -> None:
        """Return the allocator's cached blocks to the driver (the caller drops its references
        to failed work and collects garbage first: cached blocks of live tensors stay)."""
        self.synchronize()
        self._cuda.empty_cache()

    def energy(self, fn: Callable[[], object], min_seconds: float) -> EnergyReading | None:
        monitor = self.monitor
        if monitor is None or min_seconds <= 0:
            return None
        return measure_energy(monitor, fn, self.synchronize, min_seconds, clock=self._clock)

    def telemetry_start(self) -> object:
        """A snapshot before a group. This process's CUDA context is created first (NVML lists a
        process only once it has one), so that the process seen appearing is taken to be this
        one where NVML shows host PIDs, and it is never counted as another process."""
        monitor = self.monitor
        if monitor is None:
            return None
        before = monitor.process_ids()
        self.synchronize()  # creates this process's context on the device if it has none yet
        monitor.adopt_new_process(before)
        return monitor.snapshot(has_context=True)

    def telemetry_columns(self, start: object) -> dict[str, Any]:
        """NVML readings around a group (see `telemetry.group_columns`), the CUDA context's
        footprint (this process's GPU memory by NVML minus what torch's allocator reserved), and
        `gpu_telemetry_note` where telemetry is missing or partial."""
        monitor = self.monitor
        note = {"gpu_telemetry_note": self.telemetry_note} if self.telemetry_note else {}
        if monitor is None or not isinstance(start, GpuSnapshot):
            return note
        self.synchronize()
        end = monitor.snapshot(has_context=True)
        columns = group_columns(start, end) | note
        if end.process_memory_bytes is not None:
            reserved = int(self._cuda.memory_reserved(self.index))
            columns["cuda_context_bytes"] = max(0, end.process_memory_bytes - reserved)
        return columns


class CudaAllocatorPeak:
    """Peak bytes allocated by the caching allocator during the block, beyond what was live before.

    Deterministic for fixed shapes (the allocator rounds to 512-byte blocks).
    """

    def __init__(self, index: int, cuda: Any) -> None:
        self._index = index
        self._cuda = cuda
        self.peak_bytes = 0
        self.extra: dict[str, int] = {}

    @contextmanager
    def track(self) -> Iterator[PeakCounter]:
        cuda = self._cuda
        cuda.synchronize(self._index)
        cuda.reset_peak_memory_stats(self._index)
        before = cuda.memory_allocated(self._index)
        try:
            yield self
        finally:
            cuda.synchronize(self._index)
            peak = cuda.max_memory_allocated(self._index)
            self.peak_bytes = peak - before
            self.extra = {
                "cuda_max_allocated_bytes": int(peak),
                "cuda_max_reserved_bytes": int(cuda.max_memory_reserved(self._index)),
                "cuda_live_before_bytes": int(before),
            }


def available_kinds() -> list[str]:
    """Device kinds this machine can run: always "cpu"; "cuda" when torch sees a GPU."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def parse_device_kinds(text: str | None) -> list[str]:
    """Parse a comma-separated device list ("cpu,cuda"); empty or "auto" means every known kind.

    Unknown names raise `UserError`. Kinds this machine lacks are kept: the suite reports them
    as skipped with the reason, rather than silently measuring less than was asked.
    """
    if not text or text.strip() in ("", "auto", "all"):
        return list(KNOWN_KINDS)
    kinds = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [k for k in kinds if k not in KNOWN_KINDS]
    if unknown:
        raise UserError(f"unknown device {unknown[0]!r} (known: {', '.join(KNOWN_KINDS)})")
    return list(dict.fromkeys(kinds))


def unavailable_reason(kind: str) -> str | None:
    """Why a device kind cannot run here, or None when it can."""
    if kind == "cuda" and not torch.cuda.is_available():
        return "CUDA not available on this machine (torch.cuda.is_available() is False)"
    return None


def make_device(kind: str) -> Device:
    if kind == "cpu":
        return CpuDevice()
    if kind == "cuda":
        return CudaDevice(torch.cuda.current_device())
    raise UserError(f"unknown device {kind!r} (known: {', '.join(KNOWN_KINDS)})")
