"""A benchmark run: its configuration, the cases it measures, and the report it writes as it goes.

`BenchSession` is what the pytest layer (root `conftest.py`) drives; it needs no pytest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from bench_lib.config import tool_table
from bench_lib.errors import UserError
from bench_lib.measure.allocator import pin_glibc_malloc
from bench_lib.measure.devices import parse_device_kinds, unavailable_reason
from bench_lib.measure.environment import Environment, collect_environment, torch_threads
from bench_lib.measure.inject import parse_injection
from bench_lib.measure.precision import parse_dtypes, unsupported_reason
from bench_lib.measure.runner import START_METHODS, Effort, run_group
from bench_lib.models import OPTIONAL, ZOO, get_model
from bench_lib.models.hf import transformers_module
from bench_lib.models.plugins import absolute_reference, check_user_model, is_reference
from bench_lib.preflight import compile_problem
from bench_lib.records.cases import MODE_NAMES, Case, Profile, get_profile, parse_list
from bench_lib.records.results import OOM, CaseResult
from bench_lib.records.schema import (
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    check_links,
    check_writable,
    modules_frame,
    modules_path,
    samples_path,
    to_frame,
    write_csv_atomic,
    write_text_atomic,
)
from bench_lib.suites import SUITES, Suite
from bench_lib.suites.finetune.measure import OPTIMIZERS

DEFAULT_THREADS = 1  # like torch.utils.benchmark: steadier figures; BENCH_THREADS overrides


@dataclass(frozen=True)
class RunConfig:
    """What a run measures and where it writes. Build it with `RunConfig.parse`."""

    profile: Profile
    models: tuple[str, ...]
    devices: tuple[str, ...]
    modes: tuple[str, ...] = MODE_NAMES
    threads: int | None = DEFAULT_THREADS
    results_dir: Path = Path("results")
    pin_malloc: bool = True
    optimizers: tuple[str, ...] = tuple(OPTIMIZERS)
    start_method: str = "forkserver"
    inject: str = ""
    dtypes: tuple[str, ...] = ("float32",)
    compile: bool = False

    @classmethod
    def parse(
        cls,
        profile: str = "default",
        models: str | None = None,
        batch_sizes: str | None = None,
        devices: str | None = None,
        modes: str | None = None,
        threads: str | None = None,
        results_dir: str | Path = "results",
        malloc: str = "pinned",
        processes: str | None = None,
        optimizers: str | None = None,
        start_method: str | None = None,
        inject: str | None = None,
        dtypes: str | None = None,
        compile: str | bool | None = None,
        max_processes: str | None = None,
        ci_target: str | None = None,
        group_budget: str | None = None,
        ci_run_sd: str | None = None,
    ) -> RunConfig:
        """Parse user-facing strings (options or environment variables); `UserError` on bad ones."""
        if malloc not in ("pinned", "default"):
            raise UserError(f"unknown malloc setting {malloc!r} (known: pinned, default)")
        start_method = start_method or "forkserver"
        if start_method not in START_METHODS:
            raise UserError(f"unknown start method {start_method!r} (known: {', '.join(START_METHODS)})")
        chosen = get_profile(profile)
        chosen = _with_effort(chosen, processes, max_processes, ci_target, group_budget, ci_run_sd=ci_run_sd)
        if batch_sizes is not None and batch_sizes.strip():
            sizes = [_parse_count(b.strip(), "batch sizes") for b in batch_sizes.split(",") if b.strip()]
            chosen = replace(chosen, batch_sizes=tuple(dict.fromkeys(sizes)))
        return cls(
            profile=chosen,
            models=parse_models(models, chosen.models or default_models()),
            devices=tuple(parse_device_kinds(devices)),
            modes=tuple(parse_list(modes, list(MODE_NAMES), "mode")),
            threads=None
            if threads == "default"
            else _parse_count(threads or str(DEFAULT_THREADS), "threads"),
            results_dir=Path(results_dir),
            pin_malloc=malloc == "pinned",
            optimizers=tuple(parse_list(optimizers, list(OPTIMIZERS), "optimizer")),
            start_method=start_method,
            inject=inject or "",
            dtypes=tuple(parse_dtypes(dtypes)),
            compile=_parse_switch(compile, "compile"),
        ).checked()

    def checked(self) -> RunConfig:
        """`self`, after checking what needs the models resolved (an injection's model)."""
        injection = parse_injection(self.inject)
        if injection is not None and injection.model not in (*ZOO, *self.model_names):
            raise UserError(f"inject: model {injection.model!r} is not in this run")
        return self

    @property
    def model_names(self) -> tuple[str, ...]:
        """The `model` column of each of `models` (a user reference's display name)."""
        return tuple(get_model(m).name for m in self.models)

    def model_reference(self, name: str) -> str:
        """What a worker loads for the model called `name` (the ruler is not a model: itself)."""
        return dict(zip(self.model_names, self.models, strict=True)).get(name, name)

    def cases_of(self, suite: str) -> list[Case]:
        """The cases of one suite (`bench_lib.suites`) this run asks for."""
        return SUITES[suite].cases(self)

    def cases(self) -> list[Case]:
        """Every case of the run, suite by suite in the suites' order."""
        return [case for suite in SUITES.values() for case in suite.cases(self)]


def unavailable(case: Case) -> str | None:
    """Why `case` cannot run on this machine (no such device, its dtype unsupported, or no
    toolchain for torch.compile), or None."""
    return (
        unavailable_reason(case.device)
        or unsupported_reason(case.device, case.dtype)
        or (compile_problem(case.device) if case.compile else None)
    )


def _with_effort(
    profile: Profile,
    processes: str | None,
    max_processes: str | None,
    ci_target: str | None,
    group_budget: str | None,
    pyproject: Path = Path("pyproject.toml"),
    ci_run_sd: str | None = None,
) -> Profile:
    """`profile` with the effort the options ask for: each given option, else the same key of
    `[tool.bench_lib]` in `pyproject` (`max_processes`, `ci_target`, `group_budget_s`,
    `ci_run_sd`), else the profile's. `processes` alone (without `max_processes`) fixes the number of processes."""
    table = tool_table(pyproject)
    given = {k: v.strip() for k, v in (("max_processes", max_processes), ("ci_target", ci_target),
             ("group_budget_s", group_budget), ("ci_run_sd", ci_run_sd)) if v is not None and v.strip()}  # fmt: skip
    keys = ("max_processes", "ci_target", "group_budget_s", "ci_run_sd")
    for key in keys:
        if isinstance(table.get(key), dict) and key != "ci_run_sd":  # a table only for ci_run_sd, by suite
            raise UserError(f"{pyproject}: [tool.bench_lib] {key} must be a number, got a table")
    configured = {k: table[k] if k == "ci_run_sd" else str(table[k]) for k in keys if k in table}
    fixed = processes is not None and processes.strip() != "" and "max_processes" not in given
    if fixed:  # --bench-processes alone: exactly that many, whatever pyproject.toml says
        configured.pop("max_processes", None)
    values = configured | given
    if processes is not None and processes.strip():
        profile = replace(profile, processes=_parse_count(processes, "processes", minimum=0), max_processes=0)
    if "max_processes" in values:
        maximum = _parse_count(values["max_processes"], "max_processes", 0)
        if (
            "max_processes" not in given and maximum
        ):  # pyproject's, for every profile: never below one's minimum
            maximum = max(maximum, profile.processes)
        profile = replace(profile, max_processes=maximum)
    if "ci_target" in values:
        profile = replace(profile, ci_target=_parse_number(values["ci_target"], "ci_target"))
    # per suite, an option's pairs go on top of pyproject's setting; one number replaces it
    run_sd = given.get("ci_run_sd")
    if "ci_run_sd" in configured and (run_sd is None or "=" in run_sd):
        try:
            profile = with_run_sd(profile, _setting_text(configured["ci_run_sd"]))
        except UserError as exc:
            raise UserError(f"{pyproject}: [tool.bench_lib] {exc}") from None
    if run_sd is not None:
        profile = with_run_sd(profile, run_sd)
    if "group_budget_s" in values:
        profile = replace(
            profile, group_budget_s=_parse_number(values["group_budget_s"], "group budget", allow_zero=True)
        )
    if profile.max_processes and profile.max_processes < profile.processes:
        raise UserError(f"max_processes ({profile.max_processes}) is below processes ({profile.processes})")
    return profile


def _setting_text(value: Any) -> str:
    """`[tool.bench_lib] ci_run_sd` as its option would spell it (an inline table of numbers such
    as `{inference = 0.008}` as `inference=0.008`); `UserError` for a table that is empty or
    holds anything but numbers."""
    if not isinstance(value, dict):
        return str(value)
    bad = next(
        (f"{k} = {v!r}" for k, v in value.items() if isinstance(v, bool) or not isinstance(v, int | float)),
        None,
    )
    if not value or bad:
        raise UserError(
            "ci_run_sd must be a number or a table of numbers by suite"
            + (f", got {bad}" if bad else ", got an empty table")
        )
    return ",".join(f"{k}={v!r}" for k, v in value.items())


def with_run_sd(profile: Profile, text: str) -> Profile:
    """`profile` with the spread between runs its ratio intervals are widened by: one number for
    every suite (`0.012`), or per suite (`inference=0.008,finetune=0.012`; a suite not named
    keeps the profile's). `UserError` on anything else."""
    known = [s.name for s in SUITES.values() if s.ratio_column is not None]
    if text.strip() in known:
        raise UserError(f"ci_run_sd: {text.strip()} needs a value ({text.strip()}=0.008)")
    if "=" not in text:
        return replace(
            profile, ci_run_sd=_parse_number(text, "ci_run_sd", allow_zero=True), ci_run_sd_suites=()
        )
    given: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        suite, _, number = (x.strip() for x in part.partition("="))
        if suite not in known:
            raise UserError(
                f"ci_run_sd: unknown suite {suite!r} in {text!r} (known: {', '.join(known)}; "
                "or one number for every suite)"
            )
        if suite in given:
            raise UserError(f"ci_run_sd: {suite} is named twice in {text!r}")
        given[suite] = _parse_number(number, f"ci_run_sd for {suite}", allow_zero=True)
    return replace(profile, ci_run_sd_suites=tuple((dict(profile.ci_run_sd_suites) | given).items()))


def _parse_number(text: str, what: str, allow_zero: bool = False) -> float:
    """A finite number > 0 (>= 0 with `allow_zero`); `UserError` otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    ok = value >= 0 if allow_zero else value > 0
    if not ok or value == float("inf"):
        finite = "finite " if value == float("inf") else ""
        raise UserError(f"{what} must be a {finite}number {'>= 0' if allow_zero else '> 0'}, got {text!r}")
    return value + 0.0  # -0 as 0


def default_models(pyproject: Path = Path("pyproject.toml")) -> tuple[str, ...]:
    """The zoo, plus the user models listed in `[tool.bench_lib] models` of `pyproject`
    (file paths relative to it)."""
    table = tool_table(pyproject)
    extra = table.get("models", [])
    if not isinstance(extra, list) or not all(isinstance(m, str) for m in extra):
        raise UserError(f"{pyproject}: [tool.bench_lib] models must be a list of strings")
    return (*ZOO, *(absolute_reference(m, pyproject.resolve().parent) for m in extra))


def parse_models(text: str | None, default: Sequence[str]) -> tuple[str, ...]:
    """Zoo names, optional (Hugging Face) names and user references, comma-separated; empty
    means `default`. User references are checked now (their factory is called at batch size 1),
    so that a mistake is one line before anything is measured."""
    refs = list(default)
    if text and text.strip():
        refs = [
            absolute_reference(p.strip()) if is_reference(p.strip()) else p.strip() for p in text.split(",")
        ]
        refs = [r for r in refs if r]
    refs = list(dict.fromkeys(refs))
    names: dict[str, str] = {}
    for ref in refs:
        spec = check_user_model(ref) if is_reference(ref) else get_model(ref)
        if ref in OPTIONAL:
            transformers_module()  # the optional models are the Hugging Face ones
        if spec.name in names:
            raise UserError(f"models {names[spec.name]!r} and {ref!r} have the same name {spec.name!r}")
        names[spec.name] = ref
    return tuple(refs)


def _parse_switch(value: str | bool | None, what: str) -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = value.strip().lower()
    if text in ("", "0", "off", "no", "false"):
        return False
    if text in ("1", "on", "yes", "true"):
        return True
    raise UserError(f"{what} must be on or off, got {value!r}")


def _parse_count(text: str, what: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        extra = " or 'default'" if what == "threads" else ""
        raise UserError(f"{what} must be an integer >= {minimum}{extra}, got {text!r}")
    return value


@dataclass
class ReportWriter:
    """Writes the report, its raw samples and its by-module memory after every case
    (atomically), so an interrupted run keeps what it measured; `finish` copies them to
    `latest.csv`, `latest.samples.csv` and `latest.modules.csv`."""

    results_dir: Path
    env: Environment
    profile: str
    inject: str = ""
    out: Path | None = None  # write here instead of results_dir/<run id>.csv (and no latest.csv)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    rows: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    modules: list[dict] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return f"{self.started.strftime('%Y%m%dT%H%M%SZ')}_{self.env.machine_id}"

    @property
    def path(self) -> Path:
        return self.out if self.out is not None else self.results_dir / f"{self.run_id}.csv"

    def add(self, result: CaseResult) -> None:
        """Add one case (replacing its earlier rows, if any: a write that failed half-way and is
        tried again leaves one row per case) and rewrite the report and its companions."""
        key = asdict(result.case)

        def mine(item: dict) -> bool:
            return all(item.get(k) == v for k, v in key.items())

        again = any(mine(row) for row in self.rows)  # usually not: the samples are then not scanned

        def others(items: list[dict]) -> list[dict]:
            return [item for item in items if not mine(item)] if again else list(items)

        run = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "timestamp_utc": self.started.isoformat(timespec="seconds"),
            "profile": self.profile,
            "inject": self.inject,
        }
        rows = [*others(self.rows), run | result.row() | self.env.columns()]
        samples = others(self.samples)
        if result.samples is not None:
            s = result.samples
            for i, (proc, primary, host) in enumerate(zip(s.process, s.primary_ms, s.host_ms, strict=True)):
                samples.append(
                    {"run_id": self.run_id, **key, "process": proc, "round": i,
                     "latency_ms": primary, "host_latency_ms": host}
                )  # fmt: skip
        modules = [*others(self.modules), *({"run_id": self.run_id} | m for m in result.module_rows())]
        # each file is written atomically and remembered at once, so that an interrupt between two
        # writes (Ctrl-C lands anywhere) leaves what is in memory the same as what is on disk
        write_csv_atomic(to_frame(rows), self.path)
        self.rows = rows
        write_csv_atomic(pd.DataFrame(samples, columns=list(SAMPLE_COLUMNS)), samples_path(self.path))
        self.samples = samples
        write_csv_atomic(modules_frame(modules), modules_path(self.path))
        self.modules = modules

    def frame(self) -> pd.DataFrame:
        return to_frame(self.rows)

    def modules_frame(self) -> pd.DataFrame:
        return modules_frame(self.modules)

    def finish(self) -> Path | None:
        """Copy the report to `latest.csv`; None when no case was recorded."""
        if not self.rows or not self.path.exists():
            return None
        if self.out is not None:
            return self.path
        latest = self.results_dir / "latest.csv"
        companions = (samples_path, modules_path)
        for src, dst in ((self.path, latest), *((c(self.path), c(latest)) for c in companions)):
            if not src.exists():  # interrupted before its first write: no stale companion either
                dst.unlink(missing_ok=True)
                continue
            write_text_atomic(dst, src.read_text())  # a temporary name of its own: runs may finish together
        return self.path


class BenchSession:
    """Measures cases on demand, a whole interleaving group at a time in worker processes, and
    records each case in the report as it is asked for."""

    def __init__(self, config: RunConfig, out: Path | None = None) -> None:
        self.config = config
        malloc = pin_glibc_malloc() if config.pin_malloc else "default (not pinned)"
        with torch_threads(config.threads):  # so the fingerprint records the workers' setting
            self.env = collect_environment(cpu_malloc=malloc)
        if out is not None:  # through a link once: the report, its companions and the check in one folder
            try:
                check_links(Path(out))
            except NotADirectoryError as exc:
                raise UserError(f"{exc.filename}: {exc.strerror}") from None
            out = Path(os.path.realpath(out))
        self.writer = ReportWriter(config.results_dir, self.env, config.profile.name, config.inject, out=out)
        if self.writer.path.is_dir():
            raise UserError(f"{self.writer.path}: a folder; the report needs a file name")
        check_writable(self.writer.path.parent)
        self._groups: dict[Case, dict[Case, CaseResult]] = {}
        self._oom_batch: dict[tuple[str, str, str, str], int] = {}  # smallest batch that ran out
        self._cases = config.cases()

    def _request(self, group: Case, cases: list[Case]) -> dict:
        return {
            "cases": [asdict(c) for c in cases],
            "model": self.config.model_reference(group.model),
            "profile": asdict(self.config.profile),
            "threads": self.config.threads,
            "pin_malloc": self.config.pin_malloc,
            "inject": self.config.inject,
        }

    def result(self, case: Case) -> CaseResult:
        """The result of `case`, measuring its whole group (interleaved, in the profile's worker
        processes) the first time; the result is added to the report (once, however often it
        is asked for)."""
        group = case.group
        if group not in self._groups:
            # a group is measured once, as a whole: every case of it this run asks for (the
            # suites add the reference cases, grad or full, that the ratios need)
            cases = [c for c in self._cases if c.group == group] or [case]
            where = (group.suite, group.model, group.device, group.dtype)
            limit = self._oom_batch.get(where)
            if limit is not None and group.batch_size >= limit:  # known to exceed the device
                why = f"not run: batch size {limit} already ran out of memory on {group.device}"
                self._groups[group] = {c: CaseResult(c, OOM, why) for c in cases}
            else:
                suite = SUITES[group.suite]
                pooled, stop_reason, processes = run_group(
                    self._request(group, cases),
                    {c.variant: c for c in cases},
                    self.effort,
                    self.config.start_method,
                    assess=lambda results: widest_interval(suite, results),
                )
                if any(r.status == OOM for r in pooled.values()):
                    self._oom_batch[where] = min(group.batch_size, limit or group.batch_size)
                by_case = {r.case: r for r in pooled.values()}
                effort = {  # on every row of the group
                    "stop_reason": stop_reason,
                    "processes": processes,
                    "ci_run_sd": self.config.profile.run_sd(group.suite),
                }
                self._groups[group] = {
                    c: replace(r, metrics={**r.metrics, **effort})
                    for c, r in suite.add_ratios(by_case, self.config.profile.run_sd(group.suite)).items()
                }
        result = self._groups[group][case]
        self.writer.add(result)  # two tests may ask for one case: it stays one row of the report
        return result

    @property
    def effort(self) -> Effort:
        p = self.config.profile
        return Effort(p.processes, p.max_processes, p.ci_target, p.group_budget_s)

    def close(self) -> Path | None:
        """Finish the report: copy it to latest.csv."""
        return self.writer.finish()


def widest_interval(suite: Suite, results: Mapping[str, CaseResult]) -> float | None:
    """The widest relative half-width of the ratio intervals of a group's pooled results (by
    variant), or None when the group has no interval to judge (no ratio, or one process).
    The intervals of the run's own processes: the part more processes can narrow (the spread
    between runs, `ci_run_sd`, is added to the reported intervals only)."""
    if suite.ratio_column is None:
        return None
    column = suite.ratio_column
    widths = []
    for result in suite.add_ratios({r.case: r for r in results.values()}).values():
        value, low, high = (result.metrics.get(k) for k in (column, f"{column}_ci_low", f"{column}_ci_high"))
        if result.ok and value and low is not None and high is not None:
            widths.append((high - low) / 2 / abs(value))
    return max(widths) if widths else None
