"""Inference under grad, no_grad and inference_mode, for every zoo model, device and batch size.

Parametrized by the root conftest.py from the profile (`--bench-profile`, `BENCH_PROFILE`).
The modes of one model, device and batch size are measured together, interleaved round by round,
when the first of them runs; each test then reports its own mode.
"""

import pytest

from conftest import report_to_pytest_benchmark


def test_inference(benchmark, inference_case, bench_session):
    result = bench_session.result(inference_case)
    report_to_pytest_benchmark(benchmark, result)
    if not result.ok:
        pytest.fail(f"{result.status}: {result.error}", pytrace=False)
