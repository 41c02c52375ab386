"""Fine-tuning steps with frozen layers: `full`, `frozen_<k>` (requires_grad_(False)) and
`frozen_nograd` (the frozen trunk under torch.no_grad()), with SGD-momentum and AdamW.

The strategies and optimizers of one model, device and batch size are measured together,
interleaved round by round, in the profile's worker processes; each test reports its own case.
"""

import pytest

from conftest import report_to_pytest_benchmark


def test_finetune(benchmark, finetune_case, bench_session):
    result = bench_session.result(finetune_case)
    report_to_pytest_benchmark(benchmark, result)
    if not result.ok:
        pytest.fail(f"{result.status}: {result.error}", pytrace=False)
