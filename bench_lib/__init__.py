"""bench_lib: what no_grad, inference_mode and frozen layers save, in milliseconds and bytes.

The public API for notebooks and scripts (and `ModelInstance` for your own models' factories);
the suite runs through pytest (`benchmarks/`, `make bench`), `python -m bench_lib run` or the
`bench-lib` command. Names are imported on first use, so reading, reporting, comparing and gating
reports (`read_report`, `load_results`, `compare`) never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench_lib.analysis.compare import Comparison, compare
    from bench_lib.cli import load_results
    from bench_lib.errors import UserError
    from bench_lib.models import ZOO, ModelInstance, ModelSpec
    from bench_lib.records.cases import Case, Profile
    from bench_lib.records.results import CaseResult
    from bench_lib.records.schema import read_report

_HOMES = {
    "Case": "bench_lib.records.cases",
    "Profile": "bench_lib.records.cases",
    "load_results": "bench_lib.cli",
    "Comparison": "bench_lib.analysis.compare",
    "compare": "bench_lib.analysis.compare",
    "UserError": "bench_lib.errors",
    "ZOO": "bench_lib.models",
    "ModelInstance": "bench_lib.models",
    "ModelSpec": "bench_lib.models",
    "CaseResult": "bench_lib.records.results",
    "read_report": "bench_lib.records.schema",
}

__all__ = [
    "ZOO",
    "Case",
    "CaseResult",
    "Comparison",
    "ModelInstance",
    "ModelSpec",
    "Profile",
    "UserError",
    "compare",
    "load_results",
    "read_report",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'bench_lib' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
