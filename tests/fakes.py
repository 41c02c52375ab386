"""Honest fakes of the CUDA and NVML APIs the suite calls, shared by the tests.

- `FakeClock`: the host clock; it moves only when the code under test "works".
- `FakeCuda`: a `torch.cuda` stand-in with one timeline per device. A kernel launch costs the
  host `launch_s` and returns; the device runs kernels one after the other and idles while the
  host has not launched the next one. Events are recorded on a stream of one device, carry that
  device's clock (its own epoch, not the host's), and can be read only once the device has passed
  them and the host knows it (after a synchronize), as with `cudaEventElapsedTime`.
- `FakeCudaMemory`: the caching allocator's counters (allocated, peak, reserved in 2 MiB segments).
- `FakeNvml`: a `pynvml` stand-in: GPUs and MIG instances found by UUID (`GPU-...`, `MIG-...`),
  compute processes (a parent holding a context, a worker that has none yet), pynvml's error
  classes (`NVMLError_NotSupported`, `NVMLError_FunctionNotFound` for functions an older driver
  lacks, and `NVMLLibraryMismatchError`, no NVMLError, from the unversioned process list there), the energy counter, and power readings that are instantaneous or averaged over the last
  second (as `nvmlDeviceGetPowerUsage` is on Ampere and newer GPUs other than the A100).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace


class FakeClock:
    """A host clock that only moves when the code under test 'works'."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float) -> Callable[[], None]:
        def fn() -> None:
            self.now += seconds

        return fn


# --------------------------------------------------------------------------------------- CUDA

DEVICE_EPOCH_S = 7919.0  # the device clock's zero is not the host's


@dataclass(frozen=True)
class FakeStream:
    device: int


class FakeEvent:
    """`torch.cuda.Event`: a timestamp on one device's clock, taken when the stream reaches it."""

    def __init__(self, cuda: FakeCuda, enable_timing: bool = False) -> None:
        self.cuda, self.timing = cuda, enable_timing
        self.device: int | None = None
        self._reached_at: float | None = None  # host-clock time the device reaches the event

    def record(self, stream: FakeStream | None = None) -> None:
        stream = stream or self.cuda.current_stream()
        self.device = stream.device
        self._reached_at = max(self.cuda.clock.now, self.cuda.busy_until[stream.device])
        self.cuda.log.append(f"record:{stream.device}")

    def query(self) -> bool:
        """Done, as far as the host can know: the device passed it and the host waited for it."""
        return self._reached_at is not None and self.cuda.clock.now >= self._reached_at

    def synchronize(self) -> None:
        assert self._reached_at is not None, "synchronize on an event never recorded"
        self.cuda.clock.now = max(self.cuda.clock.now, self._reached_at)
        self.cuda.log.append("event-sync")

    @property
    def device_time_s(self) -> float:
        assert self._reached_at is not None
        return self._reached_at + DEVICE_EPOCH_S

    def elapsed_time(self, end: FakeEvent) -> float:
        """Milliseconds from this event to `end`, like torch's."""
        if not (self.timing and end.timing):
            raise RuntimeError("Events were not created with enable_timing=True")
        if self.device != end.device:
            raise RuntimeError("the two events were recorded on different devices")
        if not (self.query() and end.query()):
            raise RuntimeError("Both events must be completed before calculating elapsed time")
        return (end.device_time_s - self.device_time_s) * 1e3


class FakeCuda:
    """The `torch.cuda` functions the suite calls, over per-device timelines and allocators."""

    def __init__(
        self,
        clock: FakeClock | None = None,
        devices: int = 1,
        launch_s: float = 5e-6,
        uuids: Iterable[str] = (),
        capability: tuple[int, int] = (9, 0),
    ) -> None:
        self.clock = clock or FakeClock()
        self.launch_s = launch_s
        self.current = 0
        self.busy_until = [0.0] * devices  # host-clock time when each device's queued work ends
        self.log: list[str] = []
        self.contexts: set[int] = set()  # devices on which this process holds a context
        self.on_context: Callable[[int], None] = lambda device: None
        uuids = list(uuids) or [f"{i:08x}-0000-4000-8000-00000000000{i}" for i in range(devices)]
        major, minor = capability
        self.props = [
            SimpleNamespace(uuid=u, name=f"Fake GPU {i}", major=major, minor=minor)
            for i, u in enumerate(uuids)
        ]
        self.allocated = [0] * devices
        self.peak = [0] * devices
        self.reserved = [200 << 20] * devices

    # contexts, devices, streams, events
    def _context(self, device: int) -> None:
        if device not in self.contexts:
            self.contexts.add(device)
            self.on_context(device)

    def _index(self, device: int | None) -> int:
        return self.current if device is None else int(device)

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return bool(self.contexts)

    def device_count(self) -> int:
        return len(self.busy_until)

    def current_device(self) -> int:
        return self.current

    def get_device_properties(self, device: int | None = None) -> SimpleNamespace:
        return self.props[self._index(device)]

    def get_device_capability(self, device: int | None = None) -> tuple[int, int]:
        props = self.props[self._index(device)]
        return props.major, props.minor

    def is_bf16_supported(self) -> bool:
        return self.props[self.current].major >= 8

    def current_stream(self, device: int | None = None) -> FakeStream:
        return FakeStream(self._index(device))

    def Event(self, enable_timing: bool = False) -> FakeEvent:
        return FakeEvent(self, enable_timing)

    def launch(self, seconds: float, device: int | None = None) -> None:
        """What a kernel launch does: the host pays the launch, the device queues the kernel."""
        d = self._index(device)
        self._context(d)
        self.clock.now += self.launch_s
        self.busy_until[d] = max(self.clock.now, self.busy_until[d]) + seconds
        self.log.append("call")

    def kernel(self, seconds: float, device: int | None = None) -> Callable[[], None]:
        return lambda: self.launch(seconds, device)

    def synchronize(self, device: int | None = None) -> None:
        d = self._index(device)
        self._context(d)
        self.clock.now = max(self.clock.now, self.busy_until[d])
        self.log.append("device-sync")

    # the caching allocator
    def alloc(self, nbytes: int, device: int = 0) -> None:
        self.allocated[device] += nbytes
        self.peak[device] = max(self.peak[device], self.allocated[device])

    def memory_allocated(self, device: int | None = None) -> int:
        return self.allocated[self._index(device)]

    def max_memory_allocated(self, device: int | None = None) -> int:
        return self.peak[self._index(device)]

    def reset_peak_memory_stats(self, device: int | None = None) -> None:
        d = self._index(device)
        self.peak[d] = self.allocated[d]

    def memory_reserved(self, device: int | None = None) -> int:
        return self.reserved[self._index(device)]

    def max_memory_reserved(self, device: int | None = None) -> int:
        return self.reserved[self._index(device)]

    def empty_cache(self) -> None:
        self.log.append("empty_cache")


# --------------------------------------------------------------------------------------- NVML


class NVMLError(Exception):
    """pynvml's base class: one subclass per return code, the code in `value`."""

    value = 999

    def __str__(self) -> str:
        return type(self).__name__.removeprefix("NVMLError_")


class NVMLError_NotSupported(NVMLError):
    value = 3


class NVMLError_NotFound(NVMLError):
    value = 6


class NVMLError_FunctionNotFound(NVMLError):
    value = 13


class NVMLLibraryMismatchError(Exception):
    """What pynvml (12 and 13) raises instead of NVMLError_FunctionNotFound from an unversioned
    function it maps to a newer version than the driver has (`throwOnVersionMismatch`): not an
    NVMLError."""


@dataclass(frozen=True)
class FakeHandle:
    """A device handle: a whole GPU, or a MIG instance of one (`parent`)."""

    uuid: str
    name: str
    memory_total: int
    parent: FakeHandle | None = None


@dataclass
class Process:
    pid: int
    usedGpuMemory: int | None


@dataclass
class FakeNvml:
    """The pynvml functions the suite calls, with settable readings.

    `gpus` are whole GPUs in NVML's order; `mig` maps a GPU index to the MIG instances it is split
    into (MIG mode on). `power` is "instant" (the field NVML_FI_DEV_POWER_INSTANT and
    nvmlDeviceGetPowerUsage both instantaneous), "average" (only nvmlDeviceGetPowerUsage, averaged
    over the last second of `power_trace`) or "" (no power reading). `missing` names functions the
    driver lacks: pynvml raises NVMLError_FunctionNotFound for them.
    """

    gpus: tuple[tuple[str, int], ...] = (("NVIDIA H100 80GB HBM3", 85520809984),)
    mig: dict[int, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    driver: str = "550.54.15"
    energy: bool = True
    power: str = "instant"
    missing: frozenset[str] = frozenset()
    clock: FakeClock = field(default_factory=FakeClock)
    power_trace: Callable[[float], float] = lambda t: 250.0
    energy_mj: int = 1_000_000
    reasons: int = 0x1
    sm_clock: int = 1980
    temperature: int = 40

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0
    NVML_FI_DEV_POWER_INSTANT = 186
    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    NVMLLibraryMismatchError = NVMLLibraryMismatchError

    def __post_init__(self) -> None:
        self.handles = [FakeHandle(uuid_of(i), n, m) for i, (n, m) in enumerate(self.gpus)]
        self.instances = {
            i: [FakeHandle(f"MIG-{i:04x}{k:04x}-0000-4000-8000-000000000000", n, m, self.handles[i])
                for k, (n, m) in enumerate(parts)]
            for i, parts in self.mig.items()
        }  # fmt: skip
        self.processes: dict[str, list[Process]] = {}

    def _has(self, name: str) -> None:
        if name in self.missing:
            raise NVMLError_FunctionNotFound()

    def _whole(self, h: FakeHandle, name: str) -> None:
        """Readings a MIG instance's handle does not support."""
        self._has(name)
        if h.parent is not None:
            raise NVMLError_NotSupported()

    # processes, as tests set them up
    def add_process(self, h: FakeHandle, pid: int, used: int | None = 600 << 20) -> None:
        self.processes.setdefault(h.uuid, []).append(Process(pid, used))

    def remove_process(self, h: FakeHandle, pid: int) -> None:
        self.processes[h.uuid] = [p for p in self.processes.get(h.uuid, []) if p.pid != pid]

    # inventory
    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        return len(self.handles)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeHandle:
        return self.handles[i]

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> FakeHandle:
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for h in [*self.handles, *(m for ms in self.instances.values() for m in ms)]:
            if h.uuid == uuid:
                return h
        raise NVMLError_NotFound()

    def nvmlDeviceGetName(self, h: FakeHandle) -> str:
        return h.name

    def nvmlDeviceGetUUID(self, h: FakeHandle) -> str:
        return h.uuid

    def nvmlDeviceGetMemoryInfo(self, h: FakeHandle) -> SimpleNamespace:
        return SimpleNamespace(total=h.memory_total, used=0, free=h.memory_total)

    def nvmlDeviceIsMigDeviceHandle(self, h: FakeHandle) -> bool:
        return h.parent is not None

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, h: FakeHandle) -> FakeHandle:
        if h.parent is None:
            raise NVMLError()  # pynvml: NVML_ERROR_INVALID_ARGUMENT
        return h.parent

    def nvmlDeviceGetMigMode(self, h: FakeHandle) -> list[int]:
        self._whole(h, "nvmlDeviceGetMigMode")
        index = self.handles.index(h)
        return [1, 1] if index in self.instances else [0, 0]

    # readings
    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeHandle) -> int:
        self._whole(h, "nvmlDeviceGetCurrentClocksEventReasons")
        return self.reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: FakeHandle) -> int:
        self._whole(h, "nvmlDeviceGetCurrentClocksThrottleReasons")
        return self.reasons

    def nvmlDeviceGetClockInfo(self, h: FakeHandle, which: int) -> int:
        self._whole(h, "nvmlDeviceGetClockInfo")
        return self.sm_clock if which == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTemperature(self, h: FakeHandle, sensor: int) -> int:
        self._whole(h, "nvmlDeviceGetTemperature")
        return self.temperature

    def nvmlDeviceGetUtilizationRates(self, h: FakeHandle) -> SimpleNamespace:
        self._whole(h, "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=97, memory=40)

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeHandle) -> list[Process]:
        # pynvml maps it to the _v3 function, wrapped in throwOnVersionMismatch
        try:
            self._has("nvmlDeviceGetComputeRunningProcesses")
        except NVMLError_FunctionNotFound:
            raise NVMLLibraryMismatchError(
                "Unversioned function called and the pyNVML version does not match"
            ) from None
        return list(self.processes.get(h.uuid, []))

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h: FakeHandle) -> list[Process]:
        self._has("nvmlDeviceGetComputeRunningProcesses_v2")
        return list(self.processes.get(h.uuid, []))

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeHandle) -> int:
        self._whole(h, "nvmlDeviceGetTotalEnergyConsumption")
        if not self.energy:
            raise NVMLError_NotSupported()
        return self.energy_mj

    def _average_w(self, t: float, window: float = 1.0, steps: int = 1000) -> float:
        return sum(self.power_trace(t - window + (k + 0.5) * window / steps) for k in range(steps)) / steps

    def nvmlDeviceGetPowerUsage(self, h: FakeHandle) -> int:
        self._whole(h, "nvmlDeviceGetPowerUsage")
        if not self.power:
            raise NVMLError_NotSupported()
        t = self.clock.now
        watts = self.power_trace(t) if self.power == "instant" else self._average_w(t)
        return round(watts * 1e3)

    def nvmlDeviceGetFieldValues(self, h: FakeHandle, ids: list[int]) -> list[SimpleNamespace]:
        self._whole(h, "nvmlDeviceGetFieldValues")
        out = []
        for i in ids:
            if i == self.NVML_FI_DEV_POWER_INSTANT and self.power == "instant":
                mw = round(self.power_trace(self.clock.now) * 1e3)
                out.append(SimpleNamespace(nvmlReturn=0, valueType=1, value=SimpleNamespace(uiVal=mw)))
            else:
                out.append(SimpleNamespace(nvmlReturn=NVMLError_NotSupported.value, valueType=1, value=None))
        return out


def uuid_of(index: int) -> str:
    """The NVML UUID of fake GPU `index` (torch reports the same without the `GPU-` prefix)."""
    return f"GPU-{index:08x}-1111-4000-8000-000000000000"


class FakeCudaMemory:
    """`torch.cuda`'s allocator counters: what `alloc` adds stays live until freed (a negative n)."""

    def __init__(self):
        self.allocated, self.peak, self.calls = 1000, 1000, []

    def synchronize(self, index=None):
        self.calls.append("sync")

    def reset_peak_memory_stats(self, index=None):
        self.peak = self.allocated

    def memory_allocated(self, index=None):
        return self.allocated

    def max_memory_allocated(self, index=None):
        return self.peak

    def max_memory_reserved(self, index=None):  # segments of 2 MiB, as the caching allocator's
        return -(-self.peak // (2 << 20)) * (2 << 20)

    def alloc(self, n):
        self.allocated += n
        self.peak = max(self.peak, self.allocated)
