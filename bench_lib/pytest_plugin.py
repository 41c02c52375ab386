"""The pytest face of the suite: options, case parametrization, fixtures, and the report at
session end. Registered through the `pytest11` entry point, so benchmark files in any repository
where bench_lib is installed can use its fixtures and options:

    def test_inference(bench_measure, inference_case):
        bench_measure(inference_case)

Fixtures: `<suite>_case` (parametrized over the run's cases of each suite: `ruler_case`,
`inference_case`, `finetune_case`), `bench_session` (the run, created on first use) and
`bench_measure` (measures a case, hands its samples to pytest-benchmark, fails the test when the
case did not succeed, returns the `CaseResult`). Options are `--bench-*` or `BENCH_*` variables
(`bench_lib.options`). Nothing heavy (torch) is imported until a benchmark needs it, so the plugin
costs nothing in test runs that use none of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from bench_lib.errors import UserError
from bench_lib.options import OPTIONS, from_environment, history_off

if TYPE_CHECKING:
    from bench_lib.records.results import CaseResult
    from bench_lib.session import BenchSession, RunConfig

CONFIG_KEY = pytest.StashKey["RunConfig"]()
SESSION_KEY = pytest.StashKey["BenchSession"]()
HISTORY_KEY = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bench_lib", "bench_lib benchmark suite")
    for o in OPTIONS:
        group.addoption(
            o.pytest_flag,
            default=from_environment(o),
            help=f"{o.help}. Env {o.env}; default {o.default!r}.",
        )


def _values(config: pytest.Config) -> dict[str, str]:
    return {o.field: config.getoption(o.pytest_flag) for o in OPTIONS if o.run_config}


def _explicit(config: pytest.Config) -> bool:
    """Whether any option was given (on the command line or in the environment)."""
    return any(config.getoption(o.pytest_flag) != o.default or o.env in os.environ for o in OPTIONS)


def run_config(config: pytest.Config) -> RunConfig:
    """The run's configuration, parsed once (`UserError` on a bad option)."""
    if CONFIG_KEY not in config.stash:
        from bench_lib.session import RunConfig

        config.stash[CONFIG_KEY] = RunConfig.parse(**_values(config))
    return config.stash[CONFIG_KEY]


def pytest_configure(config: pytest.Config) -> None:
    # Options the user gave are checked now, so a mistake is one line before anything runs; with
    # none given, parsing waits until a benchmark asks for cases (unrelated test runs stay light).
    if _explicit(config):
        try:
            run_config(config)
        except UserError as exc:
            raise pytest.UsageError(str(exc)) from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wanted = [name for name in metafunc.fixturenames if name.endswith("_case")]
    if not wanted:
        return
    from bench_lib.suites import SUITES

    fixtures = {f"{suite.name}_case": suite for suite in SUITES.values()}
    if not any(name in fixtures for name in wanted):
        return
    try:
        config = run_config(metafunc.config)
    except UserError as exc:
        raise pytest.UsageError(str(exc)) from None
    for name in wanted:
        if name in fixtures:
            metafunc.parametrize(name, [_param(case) for case in fixtures[name].cases(config)])


def _param(case: Any) -> Any:
    from bench_lib.session import unavailable

    reason = unavailable(case)
    return pytest.param(case, id=case.id, marks=[pytest.mark.skip(reason=reason)] if reason else [])


@pytest.fixture(scope="session")
def bench_session(request: pytest.FixtureRequest) -> BenchSession:
    """The run, created on first use only, so unit-test runs leave threads, malloc and results/ alone."""
    from bench_lib.session import BenchSession

    stash = request.config.stash
    if SESSION_KEY not in stash:
        try:
            stash[SESSION_KEY] = BenchSession(run_config(request.config))
        except UserError as exc:  # e.g. a results folder it cannot write: once, not per test
            pytest.exit(f"error: {exc}", returncode=2)
    return stash[SESSION_KEY]


@pytest.fixture
def bench_measure(benchmark: Any, bench_session: BenchSession) -> Callable[[Any], CaseResult]:
    """`bench_measure(case)`: the case's result (its whole interleaving group is measured the first
    time), reported to pytest-benchmark; the test fails when the case did not succeed."""

    def measure(case: Any) -> CaseResult:
        result = bench_session.result(case)
        report_to_pytest_benchmark(benchmark, result)
        if not result.ok:
            pytest.fail(f"{result.status}: {result.error}", pytrace=False)
        return result

    return measure


def report_to_pytest_benchmark(benchmark: Any, result: CaseResult) -> None:
    """Hand the case's interleaved samples to pytest-benchmark, so its table, JSON and compare
    see the same rounds as the CSV report (it cannot time interleaved variants itself).

    Uses pytest-benchmark's `_make_stats` (stable since 3.x, checked on 5.x); without it, the
    figures only go into `extra_info`.
    """
    case = result.case
    benchmark.group = f"{case.suite} {case.model} {case.device} b{case.batch_size} {case.optimizer}".rstrip()
    benchmark._mode = "bench_lib interleaved rounds"  # we fed it; no "fixture not used" warning
    benchmark.extra_info.update({k: v for k, v in result.metrics.items() if v is not None})
    if result.samples is None or not benchmark.enabled or not hasattr(benchmark, "_make_stats"):
        return
    iterations = result.samples.iterations
    stats = benchmark._make_stats(iterations)
    for ms in result.samples.primary_ms:
        stats.update(ms / 1e3 * iterations)  # it takes round durations in seconds


def pytest_sessionfinish(session: pytest.Session) -> None:
    bench = session.config.stash.get(SESSION_KEY, None)
    if bench is None:
        return
    path = bench.close()
    config = session.config
    history = config.getoption("--bench-history")
    if path is not None and not history_off(history):  # the run joins the results history (off: not, and the
        # history's database libraries are not even imported: gpu-check runs without them)
        from bench_lib.history.ingest import add_session_run

        line = add_session_run(path, history, bench.config.results_dir, config.rootpath)
        if line:
            config.stash[HISTORY_KEY] = line


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    bench = config.stash.get(SESSION_KEY, None)
    if bench is None or not bench.writer.rows:
        return
    from bench_lib.analysis.precision import run_line
    from bench_lib.analysis.report import render_summary

    tr = terminalreporter
    tr.section("bench_lib summary")
    env = bench.env
    tr.write_line(
        f"machine {env.machine_id}: {env.cpu_model}, {env.cpu_count} CPUs, torch {env.torch_version}, "
        f"{env.torch_threads} thread(s)" + (f", {env.gpu_name}" if env.gpu_name else "")
    )
    frame = bench.writer.frame()
    tr.write_line(render_summary(frame))
    tr.write_line("")
    profile = bench.config.profile
    if line := run_line(frame, profile.ci_target):
        tr.write_line(line)
    tr.write_line(f"report: {bench.writer.path} (copied to {bench.writer.results_dir / 'latest.csv'})")
    if HISTORY_KEY in config.stash:
        tr.write_line(config.stash[HISTORY_KEY])
