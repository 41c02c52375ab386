"""bench_lib: what no_grad, inference_mode and frozen layers save, in milliseconds and bytes.

The public API for notebooks and scripts; the benchmark suite itself runs through pytest
(`benchmarks/`) or `make bench`.
"""

from bench_lib.cases import Case, Profile
from bench_lib.cli import load_results
from bench_lib.compare import Comparison, compare
from bench_lib.errors import UserError
from bench_lib.models import ZOO, ModelSpec
from bench_lib.results import CaseResult
from bench_lib.schema import read_report

__all__ = [
    "ZOO",
    "Case",
    "CaseResult",
    "Comparison",
    "ModelSpec",
    "Profile",
    "UserError",
    "compare",
    "load_results",
    "read_report",
]
