"""The inference suite: one group (model, device, batch size) measured under every grad mode."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
from torch.utils._pytree import tree_map

from bench_lib.measure.devices import Device
from bench_lib.measure.memory import RssPeak, SavedTensorCounter
from bench_lib.measure.memory_trace import MemoryTrace, ModuleMemory, device_counters
from bench_lib.measure.modes import REFERENCE_MODE, mode_context, outputs_mismatch, semantics_violation
from bench_lib.measure.precision import FLOAT32, autocast, each_call, within
from bench_lib.measure.telemetry import energy_columns
from bench_lib.measure.timing import Variant, calibrate_iterations, measure_interleaved
from bench_lib.models import ModelSpec
from bench_lib.records.cases import INFERENCE, Case, Profile
from bench_lib.records.results import FAILED, CaseResult, failure

SEED = 0
# rtol, atol of the check that a mode's output equals grad mode's, for reduced precisions (the
# same autocast or TF32 computation, but kernels may differ between modes)
TOLERANCE = {"bfloat16": (2e-2, 2e-2), "float16": (1e-2, 1e-2), "tf32": (1e-2, 1e-2)}
COMPILED_TOLERANCE = (1e-3, 1e-4)  # inductor fuses and reorders float operations


def _probe(
    model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], context: Any, device: Device
) -> tuple[Any, dict[str, Any]]:
    """One untimed forward in `context` whose output is checked: returns (output, metrics), the
    bytes saved for backward (the mode checks need them) and the RSS high-water change."""
    saved, rss = SavedTensorCounter(model.parameters()), RssPeak()
    with context(), rss.track(), saved.track():
        output = model(*inputs)
    device.synchronize()
    metrics = {"mem_saved_for_backward_bytes": saved.saved_bytes, "rss_peak_delta_bytes": rss.delta_bytes}
    return output, metrics


def reference_output(
    model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], contexts: Mapping[str, Any], device: Device
) -> tuple[str | None, Any]:
    """The output every mode's output must equal, from a forward of its own: in the first of
    `contexts` (grad mode) where the model runs, detached so that its graph is dropped at once.
    Computed apart from the modes' probes, so that the other modes are still compared when the
    grad case fails its checks. Returns (the mode it came from, the output), or (None, None)
    when the forward fails in every mode."""
    for mode, context in contexts.items():
        try:
            with context():
                output = model(*inputs)
        except Exception:  # noqa: BLE001 - that mode's own probe reports the error
            device.release_memory()
            continue
        return mode, tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, output)
    return None, None


def _memory_probe(
    model: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    context: Any,
    device: Device,
    blocks: Sequence[torch.nn.Module],
) -> tuple[dict[str, Any], tuple[ModuleMemory, ...]]:
    """One untimed forward in `context` traced at the allocator (`MemoryTrace`): its peak, the
    device's own allocator counters where it has them, and where the bytes went, by module."""
    trace, counter = MemoryTrace(device.name, model, blocks), device_counters(device)
    saved = SavedTensorCounter(model.parameters(), label=trace.current_label)
    with context(), counter.track() if counter else nullcontext(), trace.track(), saved.track():
        model(*inputs)
    device.synchronize()
    metrics = {"mem_peak_bytes": trace.peak_bytes, **getattr(counter, "extra", {})}
    return metrics, trace.modules(saved.by_label)


def _compiled_probe(
    fast: Any, inputs: tuple[torch.Tensor, ...], context: Any, device: Device, memory: bool
) -> tuple[Any, dict[str, Any]]:
    """The first call of a compiled model in `context` (tracing and compiling: `compile_s`), then
    with `memory` one call traced at the allocator, which sees inside compiled code (no module
    attribution: compiled code runs no module hooks)."""
    device.synchronize()
    start = time.perf_counter()
    with context():
        fast(*inputs)
    device.synchronize()
    metrics: dict[str, Any] = {"compile_s": time.perf_counter() - start}
    if memory:
        trace, counter = MemoryTrace(device.name), device_counters(device)
        with context(), counter.track() if counter else nullcontext(), trace.track():
            fast(*inputs)
        device.synchronize()
        metrics |= {"mem_peak_bytes": trace.peak_bytes, **getattr(counter, "extra", {})}
    with context():
        return fast(*inputs), metrics


def input_transfer(device: Device, inputs: tuple[torch.Tensor, ...], rounds: int = 20) -> dict[str, Any]:
    """`input_bytes`, and on CUDA the median time to copy the inputs to the device from
    pageable and from pinned host memory (CUDA events, interleaved rounds)."""
    columns: dict[str, Any] = {"input_bytes": sum(t.numel() * t.element_size() for t in inputs)}
    if device.kind != "cuda":
        return columns
    pinned = [t.pin_memory() for t in inputs]
    timed = measure_interleaved(
        [
            Variant("pageable", lambda: [t.to(device.name) for t in inputs]),
            Variant("pinned", lambda: [t.to(device.name, non_blocking=True) for t in pinned]),
        ],
        device,
        rounds=rounds,
        warmup_rounds=2,
        iterations=1,
    )
    for name, samples in timed.samples.items():
        columns[f"h2d_{name}_ms"] = samples.stats().median
    return columns


def measure_inference_group(
    spec: ModelSpec,
    device: Device,
    batch_size: int,
    profile: Profile,
    modes: Sequence[str],
    dtype: str = FLOAT32,
    memory: bool = True,
) -> dict[str, CaseResult]:
    """Measure `spec` at `batch_size` on `device` under each of `modes`, interleaved (all under
    autocast to `dtype` unless it is float32).

    For each mode: one warm-up call; with `memory`, one forward traced at the allocator (peak
    bytes and where they went, by module: `CaseResult.modules`); then one probe forward that
    counts the bytes saved for backward and the RSS high-water change, and checks the mode's
    semantics and that its output equals the reference (a separate eager grad-mode forward,
    detached at once, see `reference_output`: the other modes are measured with only their own
    memory live, and still compared when the grad case fails). Then the modes that passed are
    timed round-robin (`profile.rounds` rounds after `profile.warmup_rounds`). The reference
    mode (grad) is always
    measured and returned, even when not asked for, because the ratios to it need it (the caller
    adds them with `results.with_ratios`, after pooling processes).
    """
    measured = list(dict.fromkeys([REFERENCE_MODE, *modes]))
    group = Case(INFERENCE, spec.name, device.kind, "", batch_size, dtype)
    cases = {v: group.with_variant(v) for v in measured}
    compiled = {v for v in measured if cases[v].compile}
    cast = autocast(device.kind, dtype)
    mode_only = {v: mode_context(cases[v].mode) for v in measured}
    context = {v: within(mode_only[v], cast) for v in measured}  # the one-call probes
    try:
        torch.manual_seed(SEED)
        instance = spec.instantiate(batch_size)
        model = instance.model.eval().to(device.name)
        transfer = input_transfer(device, instance.input_tuple())
        inputs = tuple(t.to(device.name) for t in instance.input_tuple())
        has_trainable = any(p.requires_grad for p in model.parameters())
        fast = torch.compile(model) if compiled else model
    except Exception as exc:  # noqa: BLE001 - a broken model fails its cases, the run goes on
        device.release_memory()
        return {m: failure(cases[m], exc) for m in measured}

    results: dict[str, CaseResult] = {}
    metrics: dict[str, dict] = {}
    modules: dict[str, tuple[ModuleMemory, ...]] = {}
    eager = {m: context[m] for m in measured if m not in compiled}
    reference_mode, reference = reference_output(model, inputs, eager, device)
    for mode in measured:
        try:
            if mode in compiled:
                output, metrics[mode] = _compiled_probe(fast, inputs, context[mode], device, memory)
            else:
                with context[mode]():
                    model(*inputs)  # warm-up: one-time allocations stay out of the memory figures
                traced: dict[str, Any] = {}
                if memory:
                    traced, modules[mode] = _memory_probe(
                        model, inputs, context[mode], device, instance.blocks
                    )
                output, metrics[mode] = _probe(model, inputs, context[mode], device)
                metrics[mode] |= traced
        except Exception as exc:  # noqa: BLE001
            device.release_memory()
            results[mode] = failure(cases[mode], exc)
            continue
        problem = semantics_violation(
            cases[mode].mode, output, metrics[mode].get("mem_saved_for_backward_bytes"), has_trainable
        )
        tolerance = TOLERANCE.get(dtype, COMPILED_TOLERANCE if mode in compiled else (1e-4, 1e-5))
        if problem is None and reference is not None:
            problem = outputs_mismatch(reference, output, *tolerance, reference_name=f"{reference_mode} mode")
        if problem is not None:
            results[mode] = CaseResult(cases[mode], FAILED, problem, metrics=metrics[mode])
        del output

    reference = None
    # timed and energy phases: the grad mode per round, autocast per call (see `each_call`)
    forward = {m: each_call(cast, partial(fast if m in compiled else model, *inputs)) for m in measured}
    variants = [Variant(m, forward[m], mode_only[m]) for m in measured if m not in results]
    iterations = profile.iterations or calibrate_iterations(
        variants, device, profile.min_round_s, start=instance.iterations, warmup=False
    )
    timed = measure_interleaved(
        variants,
        device,
        rounds=profile.rounds,
        warmup_rounds=profile.warmup_rounds,
        iterations=iterations,
    )
    for mode, error in timed.errors.items():
        results[mode] = failure(cases[mode], error, **metrics[mode])
    items = instance.items_per_batch or batch_size
    for mode, samples in timed.samples.items():
        with mode_only[mode]():  # GPU energy per item, in a phase of its own after the timing
            energy = energy_columns(device.energy(forward[mode], profile.energy_seconds), items)
        results[mode] = CaseResult(
            cases[mode],
            samples=samples,
            items_per_batch=items,
            metrics=metrics[mode] | transfer | energy,
            modules=modules.get(mode, ()),
        )
    return {m: results[m] for m in measured}
