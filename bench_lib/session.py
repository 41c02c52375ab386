"""A benchmark run: its configuration, the cases it measures, and the report it writes as it goes.

`BenchSession` is what the pytest layer (root `conftest.py`) drives; it needs no pytest.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from bench_lib.allocator import pin_glibc_malloc
from bench_lib.cases import (
    FINETUNE,
    INFERENCE,
    Case,
    Profile,
    finetune_cases,
    get_profile,
    inference_cases,
    parse_list,
    ruler_cases,
)
from bench_lib.devices import parse_device_kinds
from bench_lib.environment import Environment, collect_environment, torch_threads
from bench_lib.errors import UserError
from bench_lib.finetune import FULL, OPTIMIZERS, strategy_names
from bench_lib.inject import parse_injection
from bench_lib.models import ZOO, get_model
from bench_lib.modes import MODES, REFERENCE_MODE
from bench_lib.results import CaseResult, with_ratios
from bench_lib.ruler import RULERS
from bench_lib.runner import START_METHODS, run_group
from bench_lib.schema import SAMPLE_COLUMNS, SCHEMA_VERSION, samples_path, to_frame, write_csv_atomic

DEFAULT_THREADS = 1  # like torch.utils.benchmark: steadier figures; BENCH_THREADS overrides


@dataclass(frozen=True)
class RunConfig:
    """What a run measures and where it writes. Build it with `RunConfig.parse`."""

    profile: Profile
    models: tuple[str, ...]
    devices: tuple[str, ...]
    modes: tuple[str, ...] = tuple(MODES)
    threads: int | None = DEFAULT_THREADS
    results_dir: Path = Path("results")
    pin_malloc: bool = True
    optimizers: tuple[str, ...] = tuple(OPTIMIZERS)
    start_method: str = "forkserver"
    inject: str = ""

    @classmethod
    def parse(
        cls,
        profile: str = "default",
        models: str | None = None,
        devices: str | None = None,
        modes: str | None = None,
        threads: str | None = None,
        results_dir: str | Path = "results",
        malloc: str = "pinned",
        processes: str | None = None,
        optimizers: str | None = None,
        start_method: str | None = None,
        inject: str | None = None,
    ) -> RunConfig:
        """Parse user-facing strings (options or environment variables); `UserError` on bad ones."""
        if malloc not in ("pinned", "default"):
            raise UserError(f"unknown malloc setting {malloc!r} (known: pinned, default)")
        start_method = start_method or "forkserver"
        if start_method not in START_METHODS:
            raise UserError(f"unknown start method {start_method!r} (known: {', '.join(START_METHODS)})")
        chosen = get_profile(profile)
        if processes is not None and processes.strip():
            chosen = replace(chosen, processes=_parse_count(processes, "processes", minimum=0))
        return cls(
            profile=chosen,
            models=tuple(parse_list(models, list(ZOO), "model")),
            devices=tuple(parse_device_kinds(devices)),
            modes=tuple(parse_list(modes, list(MODES), "mode")),
            threads=None
            if threads == "default"
            else _parse_count(threads or str(DEFAULT_THREADS), "threads"),
            results_dir=Path(results_dir),
            pin_malloc=malloc == "pinned",
            optimizers=tuple(parse_list(optimizers, list(OPTIMIZERS), "optimizer")),
            start_method=start_method,
            inject=_checked_injection(inject, models),
        )

    def inference_cases(self) -> list[Case]:
        return inference_cases(self.profile, self.models, self.devices, self.modes)

    def finetune_cases(self) -> list[Case]:
        strategies_of = {m: strategy_names(get_model(m)) for m in self.models}
        return finetune_cases(self.profile, self.models, self.devices, self.optimizers, strategies_of)

    def ruler_cases(self) -> list[Case]:
        return ruler_cases(self.devices, RULERS)

    def cases(self) -> list[Case]:
        return self.ruler_cases() + self.inference_cases() + self.finetune_cases()


def _checked_injection(text: str | None, models: str | None) -> str:
    injection = parse_injection(text)
    if injection is None:
        return ""
    get_model(injection.model)  # an unknown model is a UserError now, not in a worker
    return text or ""


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
    """Writes the report and its raw samples after every case (atomically), so an interrupted run
    keeps what it measured; `finish` copies them to `latest.csv` / `latest.samples.csv`."""

    results_dir: Path
    env: Environment
    profile: str
    inject: str = ""
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    rows: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return f"{self.started.strftime('%Y%m%dT%H%M%SZ')}_{self.env.machine_id}"

    @property
    def path(self) -> Path:
        return self.results_dir / f"{self.run_id}.csv"

    def add(self, result: CaseResult) -> None:
        """Add one case and rewrite the report and its samples; on a failed write nothing changes."""
        run = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "timestamp_utc": self.started.isoformat(timespec="seconds"),
            "profile": self.profile,
            "inject": self.inject,
        }
        rows = [*self.rows, run | result.row() | self.env.columns()]
        samples = list(self.samples)
        if result.samples is not None:
            key, s = asdict(result.case), result.samples
            for i, (proc, primary, host) in enumerate(zip(s.process, s.primary_ms, s.host_ms, strict=True)):
                samples.append(
                    {"run_id": self.run_id, **key, "process": proc, "round": i,
                     "latency_ms": primary, "host_latency_ms": host}
                )  # fmt: skip
        write_csv_atomic(to_frame(rows), self.path)
        write_csv_atomic(pd.DataFrame(samples, columns=list(SAMPLE_COLUMNS)), samples_path(self.path))
        self.rows, self.samples = rows, samples

    def frame(self) -> pd.DataFrame:
        return to_frame(self.rows)

    def finish(self) -> Path | None:
        """Copy the report to `latest.csv`; None when no case was recorded."""
        if not self.rows or not self.path.exists():
            return None
        latest = self.results_dir / "latest.csv"
        for src, dst in ((self.path, latest), (samples_path(self.path), samples_path(latest))):
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        return self.path


class BenchSession:
    """Measures cases on demand, a whole interleaving group at a time in worker processes, and
    records each case in the report as it is asked for."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        malloc = pin_glibc_malloc() if config.pin_malloc else "default (not pinned)"
        with torch_threads(config.threads):  # so the fingerprint records the workers' setting
            self.env = collect_environment(cpu_malloc=malloc)
        self.writer = ReportWriter(config.results_dir, self.env, config.profile.name, config.inject)
        self._groups: dict[Case, dict[str, CaseResult]] = {}
        self._cases = config.cases()

    def _request(self, case: Case, variants: list[str]) -> dict:
        return {
            "suite": case.suite,
            "model": case.model,
            "device": case.device,
            "batch_size": case.batch_size,
            "variants": variants,
            "profile": asdict(self.config.profile),
            "threads": self.config.threads,
            "pin_malloc": self.config.pin_malloc,
            "inject": self.config.inject,
        }

    def _variants(self, group: Case) -> list[str]:
        """Every variant of `group` this run asks for (a group is measured once, as a whole)."""
        return [c.variant for c in self._cases if c.group == group]

    def result(self, case: Case) -> CaseResult:
        """The result of `case`, measuring its whole group (interleaved, in the profile's worker
        processes) the first time; the result is added to the report."""
        group = case.group
        if group not in self._groups:
            # the suites add the reference variants (grad, full) that the ratios need
            variants = self._variants(group) or [case.variant]
            cases = {v: _case_of(case, v) for v in variants}
            pooled = run_group(
                self._request(case, variants), cases, self.config.profile.processes, self.config.start_method
            )
            self._groups[group] = _add_ratios(case.suite, pooled)
        result = self._groups[group][case.variant]
        self.writer.add(result)
        return result

    def close(self) -> Path | None:
        """Finish the report: copy it to latest.csv."""
        return self.writer.finish()


def _case_of(case: Case, variant: str) -> Case:
    if case.suite != FINETUNE:
        return replace(case, mode=variant)
    optimizer, strategy = variant.split("/")
    return replace(case, optimizer=optimizer, strategy=strategy)


def _add_ratios(suite: str, results: dict[str, CaseResult]) -> dict[str, CaseResult]:
    """Each case's latency ratio to its reference: grad mode, or `full` with the same optimizer."""
    if suite == INFERENCE:
        return with_ratios(results, REFERENCE_MODE, "latency_ratio_to_grad")
    if suite != FINETUNE:
        return results
    out: dict[str, CaseResult] = {}
    for optimizer in dict.fromkeys(v.split("/")[0] for v in results):
        subset = {v: r for v, r in results.items() if v.startswith(f"{optimizer}/")}
        out |= with_ratios(subset, f"{optimizer}/{FULL}", "latency_ratio_to_full")
    return {v: out[v] for v in results}
