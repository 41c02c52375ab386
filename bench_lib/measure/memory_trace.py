"""The allocator's own record of a block: its high-water mark, and the module behind each byte.

`MemoryTrace.track()` runs a block under the PyTorch profiler with memory profiling on. The c10
CPU allocator and the CUDA caching allocator report every allocation and free to it (address,
size, device), from inside any kernel: the fused fast paths (`_transformer_encoder_layer_fwd`,
`_native_multi_head_attention`), oneDNN and im2col scratch, `out=` and `resize_` growth, compiled
code. A tensor-level view (a `TorchDispatchMode`) sees op boundaries only and misses all of it.

The trace keeps the allocations made inside the block and follows them until they are freed;
`peak_bytes` is the maximum of their live total: the allocator's high-water mark above what was
live before the block. (Memory that existed before the block and is freed inside it is not
subtracted; the suite's blocks free none.) The figures are exact and deterministic for fixed
shapes: the CPU allocator reports the bytes asked for, the CUDA allocator its 512-byte blocks.

Attribution. While tracing, global module hooks (which, unlike hooks on the modules themselves,
leave PyTorch's fused fast paths enabled) open a profiler range named after the module's path
for the duration of each forward of the model's modules (a C++ `RecordFunction`, not the
`record_function` op, which a `TorchDispatchMode` would intercept and close at once), and keep
the same path on a stack that `current_label` reads (for bytes saved for backward). An allocation belongs to the innermost
range around it. In backward, the autograd engine runs each node inside an
`evaluate_function` range carrying the sequence number of the forward op that created the node;
the allocations in it belong to the module that ran that op. So gradients (of activations and
of parameters) are charged to the layer whose backward made them. `phase` labels code outside
the model (the loss, the optimizer step). Of the bytes live at the high-water mark, each label
gets what it allocated: the labels' shares sum exactly to `peak_bytes`.

Cost: the profiler records every op and allocation of the block, and the record is walked once
in Python afterwards (~10-20 us per event): a traced call takes about 1.5-4x its own time on
one CPU thread, the most for small steps made of many tiny ops (docs/results.md gives figures).
The suite traces one untimed call per case, in one worker process, outside the timed rounds.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch._C._profiler import RecordScope, _EventType
from torch._C._profiler import _RecordFunctionFast as record_function
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from bench_lib.measure.memory import PeakCounter, StoragePeakTracker
from bench_lib.records.results import ModuleMemory

PROFILER_NOISE = "Warning: Profiler clears events at the end of each cycle"

ROOT = "(root)"  # the model's own forward, outside its submodules
OUTSIDE = "(outside modules)"  # allocations in the block outside the model's modules
AUTOGRAD = "(autograd)"  # backward work no forward op of the block explains (e.g. the seed gradient)
LOSS = "(loss)"
OPTIMIZER = "(optimizer)"
_MODULE = "bench_lib.module: "
_PHASE = "bench_lib.phase: "
_BACKWARD = "autograd::engine::evaluate_function: "


Label = str | tuple[str, int]  # a label, or ("seq", n): the label of the forward op with sequence number n
_NO_FORWARD = (
    AUTOGRAD,
    OPTIMIZER,
)  # phases whose ops no backward follows: their sequence numbers are not read


class MemoryTrace:
    """Peak allocator bytes of a block on one device, and their attribution to the model's modules.

    Parameters
    ----------
    device:
        The device whose allocator is read (`"cpu"`, `"cuda:0"`); allocations on others are ignored.
    model:
        The model whose modules the bytes are attributed to; None: no attribution (and no
        module hooks, e.g. for compiled code).
    blocks:
        The model's fine-tuning blocks: each module's `block` is the one containing it.
    default_label:
        What allocations outside the model's modules and outside any `phase` are charged to.
    """

    def __init__(
        self,
        device: str = "cpu",
        model: nn.Module | None = None,
        blocks: Sequence[nn.Module] = (),
        default_label: str = OUTSIDE,
    ) -> None:
        self._device = torch.device(device)
        self._default = default_label
        self._modules: dict[int, tuple[str, nn.Module]] = {}
        if model is not None:
            self._modules = {id(m): (name or ROOT, m) for name, m in model.named_modules()}
        paths = {id(m): path for path, m in self._modules.values()}
        self._block_paths = [paths[id(b)] for b in blocks if id(b) in paths]
        self._stack: list[str] = []
        self._ranges: list[record_function] = []
        self.peak_bytes = 0
        self.allocated_bytes = 0  # all bytes allocated in the block, freed or not
        self.peak_by_label: dict[str, int] = {}
        self._called: dict[str, None] = {}  # module paths that ran, in order

    def current_label(self) -> str:
        """The innermost module (or phase) running now: what a byte saved now is charged to."""
        return self._stack[-1] if self._stack else self._default

    @contextmanager
    def track(self) -> Iterator[MemoryTrace]:
        if torch.autograd.profiler._is_profiler_enabled:
            raise RuntimeError("the memory trace needs the PyTorch profiler, which is already running")
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # no banner on stderr per trace
        self.peak_bytes = self.allocated_bytes = 0
        self.peak_by_label, self._called = {}, {}
        hooks = []
        if self._modules:
            hooks = [
                register_module_forward_pre_hook(self._enter),
                register_module_forward_hook(self._exit, always_call=True),
            ]
        profiler = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        )
        try:
            with warnings.catch_warnings():
                # torch 2.11 warns as a trace starts that a cycle's events are cleared at its end
                # (there is one cycle here): noise on the run's stderr, once per worker process
                warnings.filterwarnings("ignore", message=PROFILER_NOISE, category=UserWarning)
                with profiler:
                    yield self
        finally:
            for hook in hooks:
                hook.remove()
            self._stack.clear()
            self._ranges.clear()
        results = profiler.profiler.kineto_results if profiler.profiler is not None else None
        assert results is not None, "the profiler recorded nothing"
        self._account(results.experimental_event_tree())

    @contextmanager
    def phase(self, label: str) -> Iterator[None]:
        """Charge what the block allocates (and saves) here, outside the model's modules, to `label`."""
        self._stack.append(label)
        try:
            with record_function(_PHASE + label):
                yield
        finally:
            self._stack.pop()

    def _enter(self, module: nn.Module, args: object) -> None:
        known = self._modules.get(id(module))
        if known is None:  # not the model's (a loss module, say): its parent's range goes on
            return
        path = known[0]
        self._called.setdefault(path)
        self._stack.append(path)
        scope = record_function(_MODULE + path)
        scope.__enter__()
        self._ranges.append(scope)

    def _exit(self, module: nn.Module, args: object, output: object) -> None:
        if id(module) in self._modules and self._ranges:
            self._stack.pop()
            self._ranges.pop().__exit__(None, None, None)

    def _account(self, roots: Sequence[Any]) -> None:
        """The high-water mark of the block's own allocations, and each label's share of it."""
        allocations, forward_label = _allocations(roots, self._device, self._default)

        def resolve(label: Label) -> str:
            seen = set()
            while not isinstance(label, str):
                if label[1] in seen:
                    return AUTOGRAD
                seen.add(label[1])
                label = forward_label.get(label[1], AUTOGRAD)
            return label

        live: dict[int, tuple[int, str]] = {}
        by_label: dict[str, int] = {}
        total = peak = allocated = 0
        peak_by_label: dict[str, int] = {}
        for _, _, ptr, nbytes, where in sorted(allocations):
            if nbytes > 0:
                if ptr in live:  # its free was not reported: drop the stale entry
                    old, old_label = live.pop(ptr)
                    total -= old
                    by_label[old_label] -= old
                label = resolve(where)
                live[ptr] = (nbytes, label)
                total += nbytes
                allocated += nbytes
                by_label[label] = by_label.get(label, 0) + nbytes
                if total > peak:
                    peak, peak_by_label = total, dict(by_label)
            elif ptr in live:  # frees of memory from before the block are not ours
                size, label = live.pop(ptr)
                total -= size
                by_label[label] -= size
        self.peak_bytes, self.allocated_bytes = peak, allocated
        self.peak_by_label = {k: v for k, v in peak_by_label.items() if v}

    def modules(self, saved_by_label: dict[str, int] | None = None) -> tuple[ModuleMemory, ...]:
        """One row per module that ran or holds bytes, in the model's order, then the labels
        outside its modules that hold bytes. `saved_by_label`: bytes saved for backward per
        label (`SavedTensorCounter.by_label`)."""
        saved = saved_by_label or {}
        rows = []
        for path, module in self._modules.values():
            if path in self._called or path in self.peak_by_label or path in saved:
                rows.append(
                    ModuleMemory(
                        path,
                        type(module).__name__,
                        self._block_of(path),
                        saved.get(path, 0),
                        self.peak_by_label.get(path, 0),
                    )
                )
        paths = {path for path, _ in self._modules.values()}
        labels = [x for x in (*self.peak_by_label, *saved) if x not in paths]
        for label in dict.fromkeys(labels):
            rows.append(ModuleMemory(label, "", label, saved.get(label, 0), self.peak_by_label.get(label, 0)))
        return tuple(rows)

    def _block_of(self, path: str) -> str:
        inside = [b for b in self._block_paths if path == b or path.startswith(b + ".")]
        if inside:
            return max(inside, key=len)
        return path if path == ROOT else path.split(".")[0]


def device_counters(device: Any) -> PeakCounter | None:
    """The device's own allocator counters, to read beside the trace (CUDA: the `cuda_*`
    columns, and a cross-check of `peak_bytes`); None where the device's counter is the
    op-boundary tensor tracker (the CPU's), which reads no allocator: its figure is what the
    trace replaces, and its dispatch mode would double the cost of a traced step."""
    counter = device.peak_counter()
    return None if isinstance(counter, StoragePeakTracker) else counter


def _allocations(
    roots: Sequence[Any], device: torch.device, default: str
) -> tuple[list[tuple], dict[int, Label]]:
    """The allocations and frees on `device` in the profiler's event tree, as (time, order,
    address, signed size, label of the innermost range), and the label of each forward op by
    sequence number (read only where a backward may follow: reading an event's fields is the
    costly part of the walk)."""
    allocation, torch_op, backward_function = (
        _EventType.Allocation,
        _EventType.TorchOp,
        RecordScope.BACKWARD_FUNCTION,
    )
    allocations: list[tuple] = []
    forward_label: dict[int, Label] = {}
    stack: list[tuple[Any, Label, bool]] = [(e, default, default not in _NO_FORWARD) for e in reversed(roots)]
    while stack:
        event, label, forward = stack.pop()
        tag = event.tag
        if tag == allocation:
            fields = event.extra_fields
            where = fields.device
            if where.type == device.type and (device.index is None or where.index == device.index):
                allocations.append(
                    (event.start_time_ns, len(allocations), fields.ptr, fields.alloc_size, label)
                )
            continue
        if tag == torch_op:
            name = event.name
            if name.startswith(_MODULE):
                label, forward = name[len(_MODULE) :], True
            elif name.startswith(_PHASE):
                label = name[len(_PHASE) :]
                forward = label not in _NO_FORWARD
            elif name.startswith(_BACKWARD):
                seq = event.extra_fields.sequence_number
                label, forward = (("seq", seq) if seq >= 0 else AUTOGRAD), False
            elif forward:
                fields = event.extra_fields
                if fields.sequence_number >= 0 and fields.scope != backward_function:
                    forward_label.setdefault(fields.sequence_number, label)
        children = event.children
        if children:
            stack.extend((child, label, forward) for child in reversed(children))
    return allocations, forward_label
