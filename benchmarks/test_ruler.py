"""The calibration ruler of each device: a fixed matmul, a memory-bound copy and a loop of tiny
ops, recorded in every run so that a comparison shows how much the machine itself moved."""

import pytest

from conftest import report_to_pytest_benchmark


def test_ruler(benchmark, ruler_case, bench_session):
    result = bench_session.result(ruler_case)
    report_to_pytest_benchmark(benchmark, result)
    if not result.ok:
        pytest.fail(f"{result.status}: {result.error}", pytrace=False)
