"""Exact tensor accounting: bytes saved for backward, storages, and the op-boundary peak.

These count tensor *storages* (several views of one storage count once), which makes them
deterministic for fixed shapes, unlike process RSS. RSS is kept as an informational figure.
The suite's peak (`mem_peak_bytes`) is the allocator's, from `bench_lib.measure.memory_trace`:
`StoragePeakTracker` sees op boundaries only and misses what kernels allocate inside an op.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import psutil
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_iter


class PeakCounter(Protocol):
    """Counts the peak tensor bytes allocated inside `track()` beyond what was live before it."""

    peak_bytes: int

    def track(self) -> Any: ...


def _storage(t: torch.Tensor) -> torch.UntypedStorage | None:
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse, nested or storage-less tensors
        return None


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one storage count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = _storage(t)
        if st is not None:
            seen[st._cdata] = st.nbytes()
    return sum(seen.values())


class _StorageDispatch(TorchDispatchMode):
    def __init__(self, tracker: StoragePeakTracker) -> None:
        super().__init__()
        self._tracker = tracker

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self._tracker._after_op((args, kwargs), out)
        return out


class StoragePeakTracker:
    """Peak bytes of tensor storages created inside `track()` and alive at the same time.

    A `TorchDispatchMode` sees every ATen op. After each op, a storage behind one of its outputs
    that is not behind one of its inputs (so not a view, an in-place result or an `out=` target) is
    new: it is recorded with its size and a C++-level weak reference
    (`StorageWeakRef`, which does not depend on the lifetime of Python storage wrappers).
    The live total is the sum over recorded storages not yet freed; the peak is its maximum.

    Storages that existed before `track()` (parameters, inputs) are never counted, so the peak is
    the block's own. Scratch buffers an op allocates and frees internally are not visible at the
    op boundary and are not counted. Works on any device; CUDA uses the allocator's counters.
    """

    def __init__(self) -> None:
        self.peak_bytes = 0
        self.allocated_bytes = 0  # total bytes of new storages, freed or not
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self._live_bytes = 0

    @contextmanager
    def track(self) -> Iterator[StoragePeakTracker]:
        self.peak_bytes = self.allocated_bytes = self._live_bytes = 0
        self._live.clear()
        with _StorageDispatch(self):
            yield self
        self._live.clear()

    def _after_op(self, inputs: object, outputs: object) -> None:
        input_keys = set()
        for t in tree_iter(inputs):
            if isinstance(t, torch.Tensor) and (st := _storage(t)) is not None:
                input_keys.add(st._cdata)
        self._drop_freed()
        for t in tree_iter(outputs):
            if not isinstance(t, torch.Tensor) or (st := _storage(t)) is None:
                continue
            key = st._cdata
            if key in input_keys or key in self._live:
                continue
            nbytes = st.nbytes()
            self._live[key] = (StorageWeakRef(st), nbytes)
            self._live_bytes += nbytes
            self.allocated_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self._live_bytes)

    def _drop_freed(self) -> None:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self._live_bytes -= self._live.pop(key)[1]


class SavedTensorCounter:
    """Bytes of the distinct storages autograd saves for backward inside `track()`.

    Storages of `exclude` (the model's parameters) are not counted: a layer that saves its weight
    adds no memory. Inputs and activations are counted. Nothing is saved under `no_grad` or
    `inference_mode`, so the count there is 0. With `label` (a function naming what is running,
    e.g. `MemoryTrace.current_label`), `by_label` splits `saved_bytes` by where each storage was
    first saved.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = (), label: Callable[[], str] | None = None) -> None:
        self._excluded = {st._cdata for t in exclude if (st := _storage(t)) is not None}
        self._label = label
        self.saved_bytes = 0
        self.saved_tensors = 0
        self.by_label: dict[str, int] = {}
        self._seen: dict[int, StorageWeakRef] = {}

    @contextmanager
    def track(self) -> Iterator[SavedTensorCounter]:
        self.saved_bytes = self.saved_tensors = 0
        self.by_label = {}
        self._seen.clear()

        def pack(t: torch.Tensor) -> torch.Tensor:
            self.saved_tensors += 1
            st = _storage(t)
            if st is not None and st._cdata not in self._excluded and st._cdata not in self._seen:
                self._seen[st._cdata] = StorageWeakRef(st)
                self.saved_bytes += st.nbytes()
                if self._label is not None:
                    where = self._label()
                    self.by_label[where] = self.by_label.get(where, 0) + st.nbytes()
            return t.detach()  # the tensor itself would make a cycle through the graph (a leak)

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield self
        self._seen.clear()


class RssPeak:
    """Change of the process's resident-set high-water mark during `track()`, in bytes.

    On Linux the high-water mark (VmHWM) is reset by writing "5" to /proc/self/clear_refs, then
    read back after the block and compared with the RSS before it (psutil). Informational only:
    RSS includes the allocator's caching and everything else the process does. `delta_bytes` is
    None where the high-water mark cannot be reset and read (never a made-up figure).
    """

    def __init__(self) -> None:
        self.delta_bytes: int | None = None

    @contextmanager
    def track(self) -> Iterator[RssPeak]:
        self.delta_bytes = None
        supported = _reset_rss_high_water()
        before = psutil.Process().memory_info().rss
        yield self
        high_water = _rss_high_water() if supported else None
        if high_water is not None:
            self.delta_bytes = max(0, high_water - before)


def _reset_rss_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_high_water() -> int | None:
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None
