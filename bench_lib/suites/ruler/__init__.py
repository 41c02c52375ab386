"""The calibration ruler of each device: a fixed matmul, a memory-bound copy and a loop of tiny
ops, recorded in every run so that a comparison shows how much the machine itself moved. The
measuring is in `bench_lib.suites.ruler.measure`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from bench_lib.records.cases import RULER, Case, ruler_cases
from bench_lib.suites import Section, Suite, register

if TYPE_CHECKING:
    from bench_lib.measure.devices import Device
    from bench_lib.records.results import CaseResult
    from bench_lib.session import RunConfig

RULERS = ("matmul", "copy", "tiny_ops")
TEXT = (
    "Median ms of fixed workloads: a 512x512 matmul, a 16 MiB copy, 100 tiny adds: the machine's own speed."
)


class RulerSuite(Suite):
    name = RULER
    order = 0

    def cases(self, config: RunConfig) -> list[Case]:
        return ruler_cases(config.devices, RULERS)

    def measure(
        self, group: Case, cases: Sequence[Case], request: Mapping[str, Any], device: Device
    ) -> dict[Case, CaseResult]:
        from bench_lib.measure.worker import profile_of
        from bench_lib.suites.ruler.measure import measure_ruler_group

        results = measure_ruler_group(device, profile_of(request), [c.mode for c in cases])
        return {r.case: r for r in results.values()}

    def report_sections(self, frame: pd.DataFrame) -> list[Section]:
        from bench_lib.analysis.report import ruler_view

        return [("Calibration ruler", TEXT, ruler_view(frame))]


register(RulerSuite())
