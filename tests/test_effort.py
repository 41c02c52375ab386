"""Adaptive effort: how many worker processes a group gets, and why it stopped (fake workers
with their own clock; the real workers are covered by test_runner)."""

from dataclasses import dataclass, field

import pytest

from bench_lib.measure import runner
from bench_lib.measure.runner import BUDGET, FIXED, MAX_PROCESSES, NO_RATIO, TARGET, Effort, run_group
from bench_lib.records.cases import Case
from bench_lib.records.results import CaseResult
from bench_lib.records.stats import Samples
from bench_lib.session import widest_interval
from bench_lib.suites import SUITES

CASES = {m: Case("inference", "m", "cpu", m, 1) for m in ("grad", "no_grad")}


@dataclass
class FakeWorkers:
    """Stands in for `runner._run_worker`: each call is one process that takes `seconds` on a
    clock of its own and measures no_grad at `ratios[i]` of grad; records what it was asked."""

    ratios: list[float]
    seconds: float = 2.0
    now: float = 0.0
    requests: list[dict] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def __call__(self, request, cases, start_method):
        i = len(self.requests)
        self.requests.append(dict(request))
        self.now += self.seconds
        grad = Samples(iterations=1, host_ms=(10.0, 10.0, 10.0))
        fast = Samples(iterations=1, host_ms=(10.0 * self.ratios[i],) * 3)
        return {
            "grad": CaseResult(CASES["grad"], samples=grad, items_per_batch=1),
            "no_grad": CaseResult(CASES["no_grad"], samples=fast, items_per_batch=1),
        }


def assess(results):
    return widest_interval(SUITES["inference"], results)


def run(monkeypatch, workers, effort):
    monkeypatch.setattr(runner, "_run_worker", workers)
    return run_group({"profile": {"iterations": 1}}, CASES, effort, assess=assess, clock=workers.clock)


def test_fixed_effort_runs_exactly_its_processes(monkeypatch):
    workers = FakeWorkers([0.8, 0.9, 0.7, 0.8])
    results, reason, n = run(monkeypatch, workers, Effort(3))
    assert reason == FIXED and len(workers.requests) == 3 == n
    assert set(results["no_grad"].samples.process) == {0, 1, 2}


def test_processes_are_added_until_the_widest_interval_meets_the_target(monkeypatch):
    # per-process ratios 0.80 and 0.90 first: a wide interval; then a run of 0.85s narrows it
    workers = FakeWorkers([0.80, 0.90] + [0.85] * 20)
    results, reason, n = run(monkeypatch, workers, Effort(2, max_processes=20, ci_target=0.02))
    assert reason == TARGET and 2 < n < 20 and n == len(workers.requests)
    no_grad = CaseResult(CASES["no_grad"], samples=results["no_grad"].samples)
    # the rule it stopped on, checked by hand: the t-interval of the n per-process log ratios
    import numpy as np
    from scipy import stats

    def relative_half_width(ratios):  # on logs: exp(h) - 1 is the relative half-width above
        logs = np.log(ratios)
        return stats.t.ppf(0.975, len(logs) - 1) * stats.tstd(logs) / len(logs) ** 0.5

    ratios = [0.80, 0.90] + [0.85] * (n - 2)
    assert relative_half_width(ratios) <= 0.02 < relative_half_width(ratios[:-1])
    assert no_grad.samples.rounds == 3 * n


def test_a_group_that_cannot_meet_the_target_stops_at_max_processes(monkeypatch):
    workers = FakeWorkers([0.7, 0.9] * 10)
    _, reason, _ = run(monkeypatch, workers, Effort(2, max_processes=6, ci_target=0.001))
    assert reason == MAX_PROCESSES and len(workers.requests) == 6


def test_no_process_is_started_that_would_end_after_the_budget(monkeypatch):
    workers = FakeWorkers([0.7, 0.9] * 10, seconds=3.0)
    _, reason, _ = run(monkeypatch, workers, Effort(2, max_processes=20, ci_target=0.001, budget_s=10.0))
    # after 3 processes 9 s are spent and a fourth would end at 12 s > 10 s
    assert reason == BUDGET and len(workers.requests) == 3 and workers.now == 9.0


def test_a_group_without_ratios_stops_at_the_minimum(monkeypatch):
    workers = FakeWorkers([0.8] * 5)
    monkeypatch.setattr(runner, "_run_worker", workers)
    _, reason, _ = run_group(
        {"profile": {}}, CASES, Effort(2, 5, 0.01), assess=lambda r: None, clock=workers.clock
    )
    assert reason == NO_RATIO and len(workers.requests) == 2


def test_memory_is_traced_by_the_first_two_processes_and_calls_per_round_are_reused(monkeypatch):
    workers = FakeWorkers([0.7, 0.9] * 5)
    run(monkeypatch, workers, Effort(2, max_processes=5, ci_target=0.001))
    assert [r["memory"] for r in workers.requests] == [True, True, False, False, False]
    # the same two run the semantic checks (a failure in either fails the pooled case)
    assert [r["checks"] for r in workers.requests] == [True, True, False, False, False]


@pytest.mark.parametrize(("processes", "maximum"), [(4, 2)])
def test_max_below_min_is_a_user_error(processes, maximum):
    from bench_lib.errors import UserError
    from bench_lib.session import RunConfig

    with pytest.raises(UserError, match="max_processes"):
        RunConfig.parse("default", models="mlp", processes=str(processes), max_processes=str(maximum))


def test_adaptive_effort_from_one_process_runs_a_second_before_judging(monkeypatch):
    """One process has no interval; judging it would stop every group at once (as `no_ratio`)."""
    workers = FakeWorkers([0.8, 0.9] * 5)
    _, reason, n = run(monkeypatch, workers, Effort(1, max_processes=4, ci_target=0.001))
    assert (reason, n) == (MAX_PROCESSES, 4)
