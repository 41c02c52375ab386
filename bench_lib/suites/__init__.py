"""The suites and their registry. A suite is one kind of measurement (inference under the grad
modes, fine-tuning with frozen layers, the calibration ruler, ...). Each declares, in a module of
this package:

- `cases(config)`: the cases a run asks for, given its `RunConfig`;
- `measure(group, cases, request, device)`: what a worker process does for one interleaving group
  (the cases that differ only in their variant), returning a result per case;
- `add_ratios(results, run_sd)`: the latency ratios of a group's pooled results (to its reference case),
  in the column `ratio_column`, with their confidence intervals;
- `report_sections(frame)`: its sections of the report (title, explanation, table).

Every module of this package is imported on first use of `SUITES` and registers its suite with
`register`, so adding a suite means adding one module (see docs/architecture.md). Importing
this package does not import torch: suites import their measuring code inside `measure`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from bench_lib.measure.devices import Device
    from bench_lib.records.cases import Case
    from bench_lib.records.results import CaseResult
    from bench_lib.session import RunConfig

Section = tuple[str, str, pd.DataFrame]


class Suite:
    """The interface every suite implements (see the package docstring). `order` places its
    cases in a run and its sections in the report."""

    name: str = ""
    order: int = 100
    ratio_column: str | None = None  # the latency ratio `add_ratios` adds (adaptive effort aims at it)

    def cases(self, config: RunConfig) -> list[Case]:
        raise NotImplementedError

    def measure(
        self, group: Case, cases: Sequence[Case], request: Mapping[str, Any], device: Device
    ) -> dict[Case, CaseResult]:
        raise NotImplementedError

    def add_ratios(self, results: Mapping[Case, CaseResult], run_sd: float = 0.0) -> dict[Case, CaseResult]:
        """`results` with the suite's ratios and their intervals (widened by `run_sd`, the spread
        between runs: see `stats.with_run_spread`; 0 for the run's own processes only)."""
        return dict(results)

    def report_sections(self, frame: pd.DataFrame) -> list[Section]:
        return []


_REGISTRY: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
    """Add `suite` to the registry (each module of this package calls it once)."""
    if not suite.name:
        raise ValueError("a suite needs a name")
    if suite.name in _REGISTRY and type(_REGISTRY[suite.name]) is not type(suite):
        raise ValueError(f"two suites are called {suite.name!r}")
    _REGISTRY[suite.name] = suite
    return suite


class _Registry(Mapping[str, Suite]):
    """The suites by name, in their `order`; the package's modules are imported on first use."""

    _loaded = False

    def _load(self) -> dict[str, Suite]:
        if not _Registry._loaded:
            for module in pkgutil.iter_modules(__path__):
                importlib.import_module(f"{__name__}.{module.name}")
            _Registry._loaded = True
        return dict(sorted(_REGISTRY.items(), key=lambda item: (item[1].order, item[0])))

    def __getitem__(self, name: str) -> Suite:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


SUITES: Mapping[str, Suite] = _Registry()
