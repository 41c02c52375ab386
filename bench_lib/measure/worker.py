"""What a worker process does: measure one group of cases, described by a JSON-able request.

Each group runs in fresh processes (see `bench_lib.measure.runner`), so that no group inherits
another's heap layout or allocator state, and so that several independent
processes can be pooled: process-to-process variation is the largest noise term on a shared
machine, and only sampling several processes averages it out (the pyperf approach). A crash of
one worker fails its group's cases, not the run.

A request carries the group's cases (as dicts), the model reference, the profile and the run's
settings; the group's suite (`bench_lib.suites`) does the measuring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from bench_lib.measure.allocator import pin_glibc_malloc, shuffle_layout
from bench_lib.measure.devices import make_device
from bench_lib.measure.environment import torch_threads
from bench_lib.measure.inject import injected_spec, parse_injection
from bench_lib.measure.precision import float32_mode, float32_settings
from bench_lib.models import ModelSpec, get_model
from bench_lib.records.cases import Case, Profile
from bench_lib.records.results import CaseResult
from bench_lib.suites import SUITES

Request = Mapping[str, Any]


def profile_of(request: Request) -> Profile:
    profile = request["profile"]
    return Profile(
        **{
            **profile,
            "batch_sizes": tuple(profile["batch_sizes"]),
            "models": tuple(profile["models"]),
            **(
                {"ci_run_sd_suites": tuple(map(tuple, profile["ci_run_sd_suites"]))}
                if "ci_run_sd_suites" in profile
                else {}
            ),
        }
    )


def model_spec(request: Request) -> ModelSpec:
    """The request's model, with the run's deliberate regression injected, if any."""
    return injected_spec(get_model(request["model"]), parse_injection(request.get("inject")))


def cases_of(request: Request) -> list[Case]:
    return [Case(**c) for c in request["cases"]]


def run_request(request: Request) -> dict[str, CaseResult]:
    """Measure the group `request` describes, in this process: the results by variant (the
    suites may add reference cases, e.g. grad mode, that the ratios need), under the group's
    float32 mode (TF32 for a `tf32` group, IEEE float32 otherwise), each row recording the
    settings it ran under."""
    if request.get("pin_malloc"):
        pin_glibc_malloc()
    layout = shuffle_layout()  # kept alive until the group is measured  # noqa: F841
    cases = cases_of(request)
    group = cases[0].group
    with torch_threads(request.get("threads")), float32_mode(group.dtype):
        device = make_device(group.device)
        start = device.telemetry_start()
        results = SUITES[group.suite].measure(group, cases, request, device)
        columns = device.telemetry_columns(start)  # GPU telemetry around the group, if any
        columns |= float32_settings()  # read at the end: a model's own code may have changed them
    return {c.variant: replace(r, metrics={**r.metrics, **columns}) for c, r in results.items()}
