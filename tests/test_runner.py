"""Worker processes and the pooling of their results."""

from dataclasses import asdict

import pytest

from bench_lib.measure.runner import pool, run_group
from bench_lib.records.cases import PROFILES, Case
from bench_lib.records.results import CaseResult, with_ratios
from bench_lib.records.stats import Samples, paired_ratio

CASE = Case("inference", "polynomial", "cpu", "grad", 2)


def cases(model="polynomial"):
    return {m: Case("inference", model, "cpu", m, 2) for m in ("grad", "no_grad")}


def request(model="polynomial", **extra):
    """What the session sends a worker: the group's cases (not variant strings), the model, the
    profile and the run's settings."""
    return {
        "cases": [asdict(c) for c in cases(model).values()], "model": model,
        "profile": asdict(PROFILES["tiny"]), "threads": 1, "pin_malloc": True, **extra,
    }  # fmt: skip


def ok(mode, host_ms, **metrics):
    case = Case("inference", "m", "cpu", mode, 1)
    return CaseResult(
        case, samples=Samples(iterations=1, host_ms=host_ms), items_per_batch=1, metrics=metrics
    )


def test_two_worker_processes_are_pooled_and_tagged():
    results = run_group(request(), cases(), processes=2)
    assert [r.status for r in results.values()] == ["ok", "ok"]
    grad = results["grad"].samples
    assert grad.rounds == 2 * 5 and grad.process == (0,) * 5 + (1,) * 5
    assert results["no_grad"].metrics["mem_saved_for_backward_bytes"] == 0


def test_spawned_workers_work_too():
    results = run_group(request(), cases(), processes=1, start_method="spawn")
    assert results["grad"].ok and results["grad"].samples.rounds == 5


def test_in_process_mode_gives_the_same_shape_of_result():
    results = run_group(request(), cases(), processes=0)
    assert results["grad"].samples.rounds == 5 and set(results["grad"].samples.process) == {0}


def test_a_worker_that_dies_fails_its_cases_and_the_run_goes_on():
    results = run_group(request(model="no-such-model"), cases("no-such-model"), processes=1)
    assert {r.status for r in results.values()} == {"failed"}
    assert "worker failed: UserError: unknown model 'no-such-model'" in results["grad"].error


def test_pool_keeps_a_failure_from_any_process():
    failed = CaseResult(CASE, "oom", "OutOfMemoryError: out of memory")
    pooled = pool([{"grad": ok("grad", (1.0,))}, {"grad": failed}])
    assert pooled["grad"].status == "oom"


def test_paired_ratio_is_the_mean_of_per_process_ratios():
    grad = {0: (10.0, 10.0), 1: (20.0, 20.0), 2: (30.0, 30.0)}
    fast = {0: (9.0, 9.0), 1: (19.0, 19.0), 2: (24.0, 24.0)}
    assert paired_ratio(fast, grad) == pytest.approx((0.9 + 0.95 + 0.8) / 3)
    with pytest.raises(ValueError):
        paired_ratio({0: (1.0,)}, {1: (1.0,)})


def test_with_ratios_pairs_rounds_by_process():
    parts = [
        {"grad": ok("grad", (10.0, 10.0)), "no_grad": ok("no_grad", (9.0, 9.0))},
        {"grad": ok("grad", (20.0, 20.0)), "no_grad": ok("no_grad", (18.0, 18.0))},
    ]
    pooled = with_ratios(pool(parts), "grad", "latency_ratio_to_grad")
    assert pooled["no_grad"].metrics["latency_ratio_to_grad"] == pytest.approx(0.9)
    assert pooled["grad"].metrics["latency_ratio_to_grad"] == 1.0
    # pooled medians alone would say 13.5 / 15 = 0.9 here too, but per-process pairing is what
    # keeps a slow process from biasing one side: the samples keep their process tags
    assert pooled["no_grad"].samples.by_process() == {0: (9.0, 9.0), 1: (18.0, 18.0)}
