"""bench_lib: what no_grad, inference_mode and frozen layers save, in milliseconds and bytes.

The public API for notebooks and scripts (and `ModelInstance` for your own models' factories);
the suite runs through pytest (`benchmarks/`, `make bench`) or `python -m bench_lib run`.
"""

from bench_lib.cases import Case, Profile
from bench_lib.cli import load_results
from bench_lib.compare import Comparison, compare
from bench_lib.errors import UserError
from bench_lib.models import ZOO, ModelInstance, ModelSpec
from bench_lib.results import CaseResult
from bench_lib.schema import read_report

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
