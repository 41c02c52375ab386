"""Worker processes and the pooling of their results."""

import math
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
    results, _, _ = run_group(request(), cases(), 2)
    assert [r.status for r in results.values()] == ["ok", "ok"]
    grad = results["grad"].samples
    assert grad.rounds == 2 * 5 and grad.process == (0,) * 5 + (1,) * 5
    assert results["no_grad"].metrics["mem_saved_for_backward_bytes"] == 0


def test_spawned_workers_work_too():
    results, _, _ = run_group(request(), cases(), 1, start_method="spawn")
    assert results["grad"].ok and results["grad"].samples.rounds == 5


def test_in_process_mode_gives_the_same_shape_of_result():
    results, _, _ = run_group(request(), cases(), 0)
    assert results["grad"].samples.rounds == 5 and set(results["grad"].samples.process) == {0}


def test_a_worker_that_dies_fails_its_cases_and_the_run_goes_on():
    results, _, _ = run_group(request(model="no-such-model"), cases("no-such-model"), 1)
    assert {r.status for r in results.values()} == {"failed"}
    assert "worker failed: UserError: unknown model 'no-such-model'" in results["grad"].error


def test_pool_keeps_a_failure_from_any_process():
    failed = CaseResult(CASE, "oom", "OutOfMemoryError: out of memory")
    pooled = pool([{"grad": ok("grad", (1.0,))}, {"grad": failed}])
    assert pooled["grad"].status == "oom"


def test_paired_ratio_is_the_geometric_mean_of_per_process_ratios_with_a_log_t_interval():
    grad = {0: (10.0, 10.0), 1: (20.0, 20.0), 2: (30.0, 30.0)}
    fast = {0: (9.0, 9.0), 1: (19.0, 19.0), 2: (24.0, 24.0)}
    estimate = paired_ratio(fast, grad)
    # by hand: logs of 0.9, 0.95, 0.8 = -0.1053605, -0.0512933, -0.2231436; their mean -0.1265991
    # (geometric mean 0.8810868) and sd 0.0878717; t(0.975, 2 df) = 4.302653, sqrt(3) = 1.732051
    assert estimate.value == pytest.approx(0.8810868, abs=1e-7) and estimate.n == 3
    h = 4.302653 * 0.0878717 / 1.732051
    assert (estimate.low, estimate.high) == pytest.approx(
        (0.8810868 * math.exp(-h), 0.8810868 * math.exp(h)), abs=1e-6
    )
    with pytest.raises(ValueError):
        paired_ratio({0: (1.0,)}, {1: (1.0,)})


def test_a_ratio_interval_stays_positive_with_two_scattered_processes():
    estimate = paired_ratio({0: (1.0,), 1: (9.0,)}, {0: (10.0,), 1: (10.0,)})  # 0.1 and 0.9
    assert 0 < estimate.low < estimate.value < estimate.high


def test_fine_tuning_ratios_are_ratios_of_trimmed_means_and_inference_ratios_of_medians():
    """A training step that runs at 1 or 2 ms from round to round: in a process with 3 slow
    rounds of 5 the median says 2.0x the `full` step, the 20%-trimmed mean 5/3 (by hand: drop one
    round from each end, (1 + 2 + 2) / 3); the inference suite keeps medians."""
    from bench_lib.suites import SUITES

    def step(strategy, host_ms):
        case = Case("finetune", "m", "cpu", batch_size=1, strategy=strategy, optimizer="sgd")
        return CaseResult(case, samples=Samples(iterations=1, host_ms=host_ms), items_per_batch=1)

    full, frozen = step("full", (1.0,) * 5), step("frozen_1", (1.0, 2.0, 2.0, 1.0, 2.0))
    out = SUITES["finetune"].add_ratios({full.case: full, frozen.case: frozen})
    assert out[frozen.case].metrics["latency_ratio_to_full"] == pytest.approx(5 / 3)
    grad, fast = ok("grad", (1.0,) * 5), ok("no_grad", (1.0, 2.0, 2.0, 1.0, 2.0))
    out = SUITES["inference"].add_ratios({grad.case: grad, fast.case: fast})
    assert out[fast.case].metrics["latency_ratio_to_grad"] == pytest.approx(2.0)


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
