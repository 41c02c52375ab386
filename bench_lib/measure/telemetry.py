"""Readings from NVML (nvidia-ml-py, module `pynvml`): the measured GPU's identity for the
fingerprint, and per-group telemetry (clocks, temperature, clock-event reasons, utilization, this
process's memory, other processes) and energy. The NVML module is injectable so that tests run
against a fake; without NVML or a GPU every reading is empty, never invented, and where telemetry
is missing or partial a note says why.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

UUID_PREFIXES = ("GPU-", "MIG-")
MIG_NOTE = (
    "MIG instance: clocks, temperature and throttle reasons are the whole GPU's; NVML has no "
    "utilization, power or energy per instance"
)


def load_nvml() -> tuple[Any | None, str]:
    """The initialised `pynvml` module and "", or None and why NVML cannot be used here."""
    try:
        import pynvml
    except ImportError:
        return None, "NVML not available: nvidia-ml-py (module pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"NVML not available: nvmlInit failed ({exc})"
    return pynvml, ""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _errors(nvml: Any) -> tuple[type[BaseException], ...]:
    """What an NVML call raises when it cannot answer: pynvml's NVMLError (NotSupported,
    NoPermission, GpuIsLost, ...) and its NVMLLibraryMismatchError (no NVMLError). Bugs
    (TypeError, AttributeError) are not swallowed."""
    return _classes(nvml, "NVMLError", "NVMLLibraryMismatchError") or (Exception,)


def _missing(nvml: Any) -> tuple[type[BaseException], ...]:
    """What a function this driver lacks raises: NVMLError_FunctionNotFound, or, from an
    unversioned function pynvml maps to a newer version (the process lists),
    NVMLLibraryMismatchError."""
    return _classes(nvml, "NVMLError_FunctionNotFound", "NVMLLibraryMismatchError")


def _classes(nvml: Any, *names: str) -> tuple[type[BaseException], ...]:
    """The exception classes of these names that this pynvml (or fake) defines."""
    return tuple(e for e in (getattr(nvml, n, None) for n in names) if isinstance(e, type))


def call(nvml: Any, names: str | Iterable[str], *args: Any) -> Any:
    """The first of the functions `names` that this driver has, called with `args`; None when
    NVML cannot answer (NotSupported and kin).

    pynvml defines every function of its own version, but an older driver lacks some of them:
    calling one raises NVMLError_FunctionNotFound (or NVMLLibraryMismatchError), and the next
    name (an older API) is tried.
    """
    missing = _missing(nvml)
    for name in [names] if isinstance(names, str) else names:
        fn = getattr(nvml, name, None)
        if fn is None:
            continue
        try:
            return fn(*args)
        except _errors(nvml) as exc:
            if isinstance(exc, missing):
                continue
            return None
    return None


@dataclass(frozen=True)
class GpuLocation:
    """Where a CUDA device is in NVML: `handle` is the device measured (a GPU or a MIG instance),
    `gpu_handle` the physical GPU it is part of (the same handle without MIG)."""

    handle: Any
    gpu_handle: Any
    uuid: str
    mig: bool


def locate_gpu(nvml: Any, uuid: str | None) -> tuple[GpuLocation | None, str]:
    """NVML's handle of the CUDA device whose UUID torch reports, and a note ("" when complete).

    torch gives the UUID without NVML's prefix: a GPU is `GPU-<uuid>`, a MIG instance
    `MIG-<uuid>`; both are tried. There is no fallback by index: CUDA and NVML may number GPUs
    differently (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER), and under MIG an index names the whole
    physical GPU, so a guess would report another device's readings. When nothing matches the
    location is None and the note says why.
    """
    if not uuid:
        return None, "no NVML telemetry: torch reports no UUID for this CUDA device"
    bare = uuid
    for prefix in UUID_PREFIXES:
        bare = bare.removeprefix(prefix)
    for prefix in UUID_PREFIXES:
        handle = call(nvml, "nvmlDeviceGetHandleByUUID", prefix + bare)
        if handle is None:
            continue
        mig = prefix == "MIG-" or bool(call(nvml, "nvmlDeviceIsMigDeviceHandle", handle))
        parent = call(nvml, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle) if mig else handle
        if parent is None:
            return None, f"no NVML telemetry: NVML does not give the GPU of MIG instance {prefix + bare}"
        return GpuLocation(handle, parent, prefix + bare, mig), MIG_NOTE if mig else ""
    return None, f"no NVML telemetry: NVML knows no device with UUID GPU-{bare} or MIG-{bare}"


@dataclass(frozen=True)
class GpuInfo:
    """The fingerprint's description of the measured GPU (or MIG instance)."""

    name: str
    uuid: str
    driver: str
    memory_total_bytes: int | None
    mig_mode: str  # "enabled", "disabled", or "" where the GPU has no MIG


def gpu_info(nvml: Any, location: GpuLocation) -> GpuInfo:
    """Name, UUID, total memory (a MIG instance's own), driver and MIG mode of a located device."""
    memory = call(nvml, "nvmlDeviceGetMemoryInfo", location.handle)
    mode = call(nvml, "nvmlDeviceGetMigMode", location.gpu_handle)
    return GpuInfo(
        name=_text(call(nvml, "nvmlDeviceGetName", location.handle) or ""),
        uuid=location.uuid,
        driver=_text(call(nvml, "nvmlSystemGetDriverVersion") or ""),
        memory_total_bytes=int(memory.total) if memory is not None else None,
        mig_mode="" if mode is None else ("enabled" if mode[0] else "disabled"),
    )


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


CLOCK_EVENT_REASONS = ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
COMPUTE_PROCESSES = ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2")
POWER_INSTANT_FIELD = 186  # pynvml.NVML_FI_DEV_POWER_INSTANT
_FIELD_VALUE = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


class GpuMonitor:
    """NVML telemetry of one CUDA device as seen from this process: snapshots around a group of
    cases, and the energy a piece of work uses.

    `pid` is this process as NVML lists it: in a container NVML may list host PIDs, so
    `adopt_new_process` can learn it from the process that appeared when this one created its
    CUDA context. Under MIG, GPU-wide readings (clocks, temperature, clock-event reasons) come
    from the physical GPU, and there is no utilization, power or energy.
    """

    def __init__(
        self, nvml: Any, handle: Any, pid: int | None = None, gpu_handle: Any = None, mig: bool = False
    ) -> None:
        self.nvml = nvml
        self.handle = handle
        self.gpu_handle = gpu_handle if gpu_handle is not None else handle
        self.mig = mig
        self.pid = pid if pid is not None else os.getpid()

    @classmethod
    def at(cls, nvml: Any, location: GpuLocation) -> GpuMonitor:
        return cls(nvml, location.handle, gpu_handle=location.gpu_handle, mig=location.mig)

    def processes(self) -> list[Any] | None:
        """The compute processes on the device (None where NVML cannot tell)."""
        return call(self.nvml, COMPUTE_PROCESSES, self.handle)

    def process_ids(self) -> set[int] | None:
        procs = self.processes()
        return None if procs is None else {p.pid for p in procs}

    def adopt_new_process(self, before: set[int] | None) -> None:
        """After this process created its CUDA context: where NVML does not list our own PID (a
        PID namespace), take the one process that appeared since `before` to be this one."""
        after = self.process_ids()
        if before is None or after is None or self.pid in after:
            return
        new = after - before
        if len(new) == 1:
            self.pid = new.pop()

    def snapshot(self, has_context: bool = True) -> GpuSnapshot:
        """The readings now. `has_context`: whether this process holds a CUDA context on the
        device (then it is one of NVML's processes, never counted as another)."""
        nvml, h, g = self.nvml, self.handle, self.gpu_handle
        mask = call(nvml, CLOCK_EVENT_REASONS, g)
        util = None if self.mig else call(nvml, "nvmlDeviceGetUtilizationRates", h)
        procs = self.processes()
        mine = [p for p in procs or [] if p.pid == self.pid]
        if procs is None:
            others = None
        elif mine:
            others = len(procs) - len(mine)
        elif has_context:  # not found by PID (a container's namespace): one of them is this process
            others = max(0, len(procs) - 1)
        else:
            others = len(procs)
        used = [getattr(p, "usedGpuMemory", None) for p in mine]
        return GpuSnapshot(
            throttle=throttle_names(mask) if mask is not None else None,
            sm_clock_mhz=call(nvml, "nvmlDeviceGetClockInfo", g, nvml.NVML_CLOCK_SM),
            mem_clock_mhz=call(nvml, "nvmlDeviceGetClockInfo", g, nvml.NVML_CLOCK_MEM),
            temperature_c=call(nvml, "nvmlDeviceGetTemperature", g, nvml.NVML_TEMPERATURE_GPU),
            power_w=self.power_w(),
            util_percent=getattr(util, "gpu", None),
            process_memory_bytes=sum(u for u in used if u is not None) if mine and None not in used else None,
            other_processes=others,
        )

    def energy_mj(self) -> int | None:
        """The GPU's energy counter in mJ since the driver loaded (None where unsupported, and
        under MIG, where it would count the other instances' work too)."""
        return None if self.mig else call(self.nvml, "nvmlDeviceGetTotalEnergyConsumption", self.handle)

    def power_w(self) -> float | None:
        """Board power by nvmlDeviceGetPowerUsage: on Ampere and newer GPUs (the A100 excepted)
        an average over the last second, elsewhere instantaneous."""
        mw = None if self.mig else call(self.nvml, "nvmlDeviceGetPowerUsage", self.handle)
        return mw / 1e3 if mw is not None else None

    def power_instant_w(self) -> float | None:
        """Instantaneous board power (field NVML_FI_DEV_POWER_INSTANT; newer drivers only)."""
        if self.mig:
            return None
        values = call(self.nvml, "nvmlDeviceGetFieldValues", self.handle, [POWER_INSTANT_FIELD])
        if not values or getattr(values[0], "nvmlReturn", 1) != 0:
            return None
        value = getattr(values[0].value, _FIELD_VALUE.get(values[0].valueType, "uiVal"), None)
        return value / 1e3 if value is not None else None


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
    # "counter" (nvmlDeviceGetTotalEnergyConsumption), "power_samples" (instantaneous power
    # integrated) or "power_average" (1-s averaged power at the end of a steady phase x its length)
    method: str


class PowerSampler:
    """Integrates instantaneous power readings (trapezoid rule) in a thread, where the GPU has
    no energy counter."""

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


POWER_AVERAGING_S = 1.0  # the window of nvmlDeviceGetPowerUsage's average on Ampere and newer


def run_for(
    fn: Callable[[], object], synchronize: Callable[[], None], seconds: float, clock: Any
) -> tuple[int, float]:
    """Call `fn` for at least `seconds`, in whole batches, synchronized before each clock check
    (never per call); (calls, seconds taken). The caller synchronized before.

    Each batch is what the calls so far say is left (at most double the calls so far, at least
    one), so the phase ends within about one call of `seconds` rather than up to twice it.
    """
    calls, batch = 0, 1
    start = clock()
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        synchronize()
        elapsed = clock() - start
        if elapsed >= seconds:
            return calls, elapsed
        left = math.ceil((seconds - elapsed) * calls / elapsed - 1e-9) if elapsed > 0 else 2 * calls
        batch = max(1, min(left, 2 * calls))


def measure_energy(
    monitor: GpuMonitor,
    fn: Any,
    synchronize: Any,
    min_seconds: float,
    clock: Any = time.perf_counter,
    sampler: Any = None,
) -> EnergyReading | None:
    """Energy used while calling `fn` repeatedly for at least `min_seconds`.

    By the best reading NVML has: the energy counter; else instantaneous power integrated over the
    phase; else the averaged power reading, which lags the load by its one-second window, so the
    phase runs a further second first and the energy is the average at its end (a window wholly
    inside the steady phase) times the phase's length. None without any of them.
    """
    before = monitor.energy_mj()
    synchronize()
    if before is not None:
        calls, seconds = run_for(fn, synchronize, min_seconds, clock)
        after = monitor.energy_mj()
        return None if after is None else EnergyReading((after - before) / 1e3, seconds, calls, "counter")
    if sampler is not None or monitor.power_instant_w() is not None:
        power = sampler or PowerSampler(monitor.power_instant_w, clock=clock)
        with power:
            calls, seconds = run_for(fn, synchronize, min_seconds, clock)
        joules = power.joules
        return None if joules is None else EnergyReading(joules, seconds, calls, "power_samples")
    if monitor.power_w() is None:
        return None
    calls, seconds = run_for(fn, synchronize, min_seconds + POWER_AVERAGING_S, clock)
    watts = monitor.power_w()
    return None if watts is None else EnergyReading(watts * seconds, seconds, calls, "power_average")


def energy_columns(reading: EnergyReading | None, items_per_call: int) -> dict[str, Any]:
    """`energy_j_per_item`, `gpu_power_w` and `energy_method` of a reading (empty without one).

    `energy_j_per_item` here is the phase's own energy / (calls x items); a case's row replaces
    it with its power at the timed rounds' pace (`CaseResult.row`)."""
    if reading is None or reading.calls < 1 or reading.seconds <= 0:
        return {}
    return {
        "energy_j_per_item": reading.joules / (reading.calls * items_per_call),
        "gpu_power_w": reading.joules / reading.seconds,
        "energy_method": reading.method,
    }
