"""What a worker process does: measure one group of cases, described by a JSON-able request.

Each group runs in fresh processes (see `bench_lib.runner`), so that no group inherits
another's heap layout or allocator state, and so that several independent
processes can be pooled: process-to-process variation is the largest noise term on a shared
machine, and only sampling several processes averages it out (the pyperf approach). A crash of
one worker fails its group's cases, not the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from bench_lib.allocator import pin_glibc_malloc
from bench_lib.cases import FINETUNE, INFERENCE, RULER, Profile
from bench_lib.devices import Device, make_device
from bench_lib.environment import torch_threads
from bench_lib.inject import injected_spec, parse_injection
from bench_lib.models import ModelSpec, get_model
from bench_lib.results import CaseResult

Request = Mapping[str, Any]


def _profile(request: Request) -> Profile:
    profile = request["profile"]
    return Profile(
        **{**profile, "batch_sizes": tuple(profile["batch_sizes"]), "models": tuple(profile["models"])}
    )


def _spec(request: Request) -> ModelSpec:
    return injected_spec(get_model(request["model"]), parse_injection(request.get("inject")))


def _inference(request: Request, device: Device) -> dict[str, CaseResult]:
    from bench_lib.inference import measure_inference_group

    return measure_inference_group(
        _spec(request),
        device,
        request["batch_size"],
        _profile(request),
        request["variants"],
        dtype=request.get("dtype", "float32"),
        memory=request.get("memory", True),
    )


def _finetune(request: Request, device: Device) -> dict[str, CaseResult]:
    from bench_lib.finetune import measure_finetune_group

    return measure_finetune_group(
        _spec(request),
        device,
        request["batch_size"],
        _profile(request),
        request["variants"],
        dtype=request.get("dtype", "float32"),
        memory=request.get("memory", True),
    )


def _ruler(request: Request, device: Device) -> dict[str, CaseResult]:
    from bench_lib.ruler import measure_ruler_group

    return measure_ruler_group(device, _profile(request), request["variants"])


SUITES: dict[str, Callable[[Request, Device], dict[str, CaseResult]]] = {
    INFERENCE: _inference,
    FINETUNE: _finetune,
    RULER: _ruler,
}


def run_request(request: Request) -> dict[str, CaseResult]:
    """Measure the group `request` describes, in this process."""
    if request.get("pin_malloc"):
        pin_glibc_malloc()
    with torch_threads(request.get("threads")):
        device = make_device(request["device"])
        start = device.telemetry_start()
        results = SUITES[request["suite"]](request, device)
        columns = device.telemetry_columns(start)  # GPU telemetry around the group, if any
    return {k: replace(r, metrics={**r.metrics, **columns}) for k, r in results.items()}
