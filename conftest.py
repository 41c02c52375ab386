"""The pytest face of the suite: options, case parametrization, and the report at session end.

A thin layer over `bench_lib.session.BenchSession`; all measuring happens in `bench_lib`.
Options can also be given as environment variables (the Makefile passes PROFILE etc. through).
"""

from __future__ import annotations

import os

import pytest

from bench_lib.errors import UserError
from bench_lib.report import render_summary
from bench_lib.results import CaseResult
from bench_lib.session import BenchSession, RunConfig, unavailable

# option name, environment variable, default, help
OPTIONS = (
    (
        "inject",
        "BENCH_INJECT",
        "",
        "deliberate regression to test the gate: MODEL:slow=FRACTION and/or mem=BYTES",
    ),
    (
        "start-method",
        "BENCH_START_METHOD",
        "forkserver",
        "how worker processes start: forkserver (fast) or spawn (fully independent, ~1.5 s each)",
    ),
    ("profile", "BENCH_PROFILE", "default", "benchmark profile: tiny, default or full"),
    (
        "models",
        "BENCH_MODELS",
        "",
        "comma-separated models: zoo names, bert-base/gpt2 (hf extra), FILE.py:FUNCTION or "
        "package.module:FUNCTION (default: the profile's, else the zoo plus [tool.bench_lib] models)",
    ),
    ("batch-sizes", "BENCH_BATCH_SIZES", "", "comma-separated batch sizes (default: the profile's)"),
    (
        "compile",
        "BENCH_COMPILE",
        "off",
        "on: every inference mode also runs torch.compile'd (compile time reported apart)",
    ),
    (
        "dtypes",
        "BENCH_DTYPES",
        "float32",
        "comma-separated precisions: float32, bfloat16, float16 (autocast; float16 on CUDA only)",
    ),
    (
        "devices",
        "BENCH_DEVICES",
        "auto",
        "comma-separated device kinds: cpu, cuda (default: auto, every kind)",
    ),
    ("modes", "BENCH_MODES", "", "comma-separated grad modes (default: grad, no_grad, inference_mode)"),
    ("threads", "BENCH_THREADS", "1", "torch intra-op threads, or 'default' for torch's own choice"),
    (
        "optimizers",
        "BENCH_OPTIMIZERS",
        "",
        "comma-separated fine-tuning optimizers: sgd, adamw (default: both)",
    ),
    (
        "processes",
        "BENCH_PROCESSES",
        "",
        "worker processes per group (default: the profile's; 0 = in this process)",
    ),
    ("results-dir", "BENCH_RESULTS_DIR", "results", "folder for the CSV reports"),
    (
        "history",
        "BENCH_HISTORY",
        "on",
        "add the run to the results history: on (the configured store, else <results-dir>/history.sqlite), "
        "off, or a database path or postgresql:// URL",
    ),
    (
        "malloc",
        "BENCH_MALLOC",
        "pinned",
        "'pinned' fixes glibc malloc thresholds (reproducible CPU figures), 'default' leaves them",
    ),
)
CONFIG_KEY = pytest.StashKey[RunConfig]()
HISTORY_KEY = pytest.StashKey[str]()
SESSION_KEY = pytest.StashKey[BenchSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bench_lib", "bench_lib benchmark suite")
    for name, env, default, help_text in OPTIONS:
        group.addoption(
            f"--bench-{name}",
            default=os.environ.get(env, default),
            help=f"{help_text}. Env {env}; default {default!r}.",
        )


def pytest_configure(config: pytest.Config) -> None:
    def opt(name: str) -> str:
        return config.getoption(f"--bench-{name}")

    try:
        config.stash[CONFIG_KEY] = RunConfig.parse(
            profile=opt("profile"),
            models=opt("models"),
            batch_sizes=opt("batch-sizes"),
            dtypes=opt("dtypes"),
            compile=opt("compile"),
            devices=opt("devices"),
            modes=opt("modes"),
            threads=opt("threads"),
            results_dir=opt("results-dir"),
            malloc=opt("malloc"),
            processes=opt("processes"),
            optimizers=opt("optimizers"),
            start_method=opt("start-method"),
            inject=opt("inject"),
        )
    except UserError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config.stash[CONFIG_KEY]
    suites = (
        ("ruler_case", config.ruler_cases),
        ("inference_case", config.inference_cases),
        ("finetune_case", config.finetune_cases),
    )
    for name, cases in suites:
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, [_param(case) for case in cases()])


def _param(case):  # type: ignore[no-untyped-def]
    reason = unavailable(case)
    return pytest.param(case, id=case.id, marks=[pytest.mark.skip(reason=reason)] if reason else [])


@pytest.fixture(scope="session")
def bench_session(request: pytest.FixtureRequest) -> BenchSession:
    """Created on first use only, so unit-test runs leave threads, malloc and results/ alone."""
    stash = request.config.stash
    if SESSION_KEY not in stash:
        stash[SESSION_KEY] = BenchSession(stash[CONFIG_KEY])
    return stash[SESSION_KEY]


def report_to_pytest_benchmark(benchmark, result: CaseResult) -> None:  # type: ignore[no-untyped-def]
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
    if path is not None:
        from bench_lib.history.ingest import add_session_run

        config = session.config
        line = add_session_run(
            path, config.getoption("--bench-history"), bench.config.results_dir, config.rootpath
        )
        if line:
            config.stash[HISTORY_KEY] = line


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    bench = config.stash.get(SESSION_KEY, None)
    if bench is None or not bench.writer.rows:
        return
    tr = terminalreporter
    tr.section("bench_lib summary")
    env = bench.env
    tr.write_line(
        f"machine {env.machine_id}: {env.cpu_model}, {env.cpu_count} CPUs, torch {env.torch_version}, "
        f"{env.torch_threads} thread(s)" + (f", {env.gpu_name}" if env.gpu_name else "")
    )
    tr.write_line(render_summary(bench.writer.frame()))
    tr.write_line("")
    tr.write_line(f"report: {bench.writer.path} (copied to {bench.writer.results_dir / 'latest.csv'})")
    if HISTORY_KEY in config.stash:
        tr.write_line(config.stash[HISTORY_KEY])
