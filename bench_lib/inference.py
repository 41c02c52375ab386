"""The inference suite: one group (model, device, batch size) measured under every grad mode."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from bench_lib.cases import INFERENCE, Case, Profile
from bench_lib.devices import Device
from bench_lib.memory import RssPeak, SavedTensorCounter
from bench_lib.models import ModelSpec
from bench_lib.modes import REFERENCE_MODE, mode_context, outputs_mismatch, semantics_violation
from bench_lib.results import FAILED, CaseResult, failure
from bench_lib.timing import Variant, measure_interleaved

SEED = 0


def _probe(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], mode: str, device: Device):
    """One untimed forward under `mode` that counts memory: returns (output, metrics)."""
    params = list(model.parameters())
    peak, saved, rss = device.peak_counter(), SavedTensorCounter(params), RssPeak()
    with mode_context(mode)(), rss.track(), peak.track(), saved.track():
        output = model(*inputs)
    device.synchronize()
    metrics = {
        "mem_peak_bytes": peak.peak_bytes,
        "mem_saved_for_backward_bytes": saved.saved_bytes,
        "rss_peak_delta_bytes": rss.delta_bytes,
    }
    return output, metrics


def measure_inference_group(
    spec: ModelSpec,
    device: Device,
    batch_size: int,
    profile: Profile,
    modes: Sequence[str],
) -> dict[str, CaseResult]:
    """Measure `spec` at `batch_size` on `device` under each of `modes`, interleaved.

    For each mode: one warm-up call, then one probe forward that counts peak tensor bytes, bytes
    saved for backward and the RSS high-water change, and checks the mode's semantics and that its
    output equals grad mode's. Then the modes that passed are timed round-robin
    (`profile.rounds` rounds after `profile.warmup_rounds`). The reference mode (grad) is always
    measured and returned, even when not asked for, because the ratios to it need it (the caller
    adds them with `results.with_ratios`, after pooling processes).
    """
    measured = list(dict.fromkeys([REFERENCE_MODE, *modes]))
    cases = {m: Case(INFERENCE, spec.name, device.kind, m, batch_size) for m in measured}
    try:
        torch.manual_seed(SEED)
        model = spec.build().eval().to(device.name)
        inputs = tuple(t.to(device.name) for t in spec.make_inputs(batch_size))
        has_trainable = any(p.requires_grad for p in model.parameters())
    except Exception as exc:  # noqa: BLE001 - a broken model fails its cases, the run goes on
        device.release_memory()
        return {m: failure(cases[m], exc) for m in measured}

    results: dict[str, CaseResult] = {}
    metrics: dict[str, dict] = {}
    reference_output = None
    for mode in measured:
        try:
            with mode_context(mode)():
                model(*inputs)  # warm-up: one-time allocations stay out of the memory figures
            output, metrics[mode] = _probe(model, inputs, mode, device)
        except Exception as exc:  # noqa: BLE001
            device.release_memory()
            results[mode] = failure(cases[mode], exc)
            continue
        problem = semantics_violation(
            mode, output, metrics[mode]["mem_saved_for_backward_bytes"], has_trainable
        )
        if problem is None and mode == REFERENCE_MODE:
            reference_output = output
        elif problem is None and reference_output is not None:
            problem = outputs_mismatch(reference_output, output)
        if problem is not None:
            results[mode] = CaseResult(cases[mode], FAILED, problem, metrics=metrics[mode])
        del output

    reference_output = None
    iterations = profile.iterations or spec.iterations(batch_size)
    forward = partial(model, *inputs)
    timed = measure_interleaved(
        [Variant(m, forward, mode_context(m)) for m in measured if m not in results],
        device,
        rounds=profile.rounds,
        warmup_rounds=profile.warmup_rounds,
        iterations=iterations,
    )
    for mode, exc in timed.errors.items():
        results[mode] = failure(cases[mode], exc, **metrics[mode])
    for mode, samples in timed.samples.items():
        results[mode] = CaseResult(
            cases[mode],
            samples=samples,
            items_per_batch=spec.items_per_batch(batch_size),
            metrics=metrics[mode],
        )
    return {m: results[m] for m in measured}
