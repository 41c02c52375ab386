"""The inference suite: each model under grad, no_grad and inference_mode (and compiled), with
latency ratios to grad mode. The measuring is in `bench_lib.suites.inference.measure`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from bench_lib.records.cases import INFERENCE, REFERENCE_MODE, Case, inference_cases
from bench_lib.suites import Section, Suite, register

if TYPE_CHECKING:
    from bench_lib.measure.devices import Device
    from bench_lib.records.results import CaseResult
    from bench_lib.session import RunConfig


TEXT = (
    "Median latency per call (ms), ratio to grad (/ grad: eager grad mode, measured interleaved: "
    "below 1 is faster), each with its 95% interval where measured; allocator peak of one forward, "
    "bytes saved for backward under grad; compile: eager or torch.compile (inductor; its compile "
    "time is the compile_s column)."
)


class InferenceSuite(Suite):
    name = INFERENCE
    order = 1
    ratio_column = "latency_ratio_to_grad"

    def cases(self, config: RunConfig) -> list[Case]:
        return inference_cases(
            config.profile, config.model_names, config.devices, config.modes, config.dtypes, config.compile
        )

    def measure(
        self, group: Case, cases: Sequence[Case], request: Mapping[str, Any], device: Device
    ) -> dict[Case, CaseResult]:
        from bench_lib.measure.worker import model_spec, profile_of
        from bench_lib.suites.inference.measure import measure_inference_group

        results = measure_inference_group(
            model_spec(request), device, group.batch_size, profile_of(request),
            [c.variant for c in cases], dtype=group.dtype, memory=request.get("memory", True),
        )  # fmt: skip
        return {r.case: r for r in results.values()}

    def add_ratios(self, results: Mapping[Case, CaseResult], run_sd: float = 0.0) -> dict[Case, CaseResult]:
        from bench_lib.records.results import with_ratios

        reference = next((c for c in results if c.mode == REFERENCE_MODE and not c.compile), None)
        return with_ratios(results, reference, "latency_ratio_to_grad", run_sd=run_sd)

    def report_sections(self, frame: pd.DataFrame) -> list[Section]:
        from bench_lib.analysis.report import inference_view

        return [("Inference", TEXT, inference_view(frame))]


register(InferenceSuite())
