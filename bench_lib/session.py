"""A benchmark run: its configuration, the cases it measures, and the report it writes as it goes.

`BenchSession` is what the pytest layer (root `conftest.py`) drives; it needs no pytest.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch

from bench_lib.allocator import pin_glibc_malloc
from bench_lib.cases import Case, Profile, get_profile, inference_cases, parse_list
from bench_lib.devices import Device, make_device, parse_device_kinds, unavailable_reason
from bench_lib.environment import Environment, collect_environment
from bench_lib.errors import UserError
from bench_lib.inference import measure_inference_group
from bench_lib.models import ZOO, get_model
from bench_lib.modes import MODES
from bench_lib.results import CaseResult
from bench_lib.schema import SCHEMA_VERSION, samples_path, to_frame, write_csv_atomic

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
    ) -> RunConfig:
        """Parse user-facing strings (options or environment variables); `UserError` on bad ones."""
        if malloc not in ("pinned", "default"):
            raise UserError(f"unknown malloc setting {malloc!r} (known: pinned, default)")
        return cls(
            profile=get_profile(profile),
            models=tuple(parse_list(models, list(ZOO), "model")),
            devices=tuple(parse_device_kinds(devices)),
            modes=tuple(parse_list(modes, list(MODES), "mode")),
            threads=_parse_threads(threads),
            results_dir=Path(results_dir),
            pin_malloc=malloc == "pinned",
        )

    def inference_cases(self) -> list[Case]:
        return inference_cases(self.profile, self.models, self.devices, self.modes)


def _parse_threads(text: str | None) -> int | None:
    if text is None or text.strip() == "":
        return DEFAULT_THREADS
    if text.strip() == "default":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"threads must be a positive integer or 'default', got {text!r}")
    return value


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block (None leaves them), restoring them after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class ReportWriter:
    """Writes the report and its raw samples after every case (atomically), so an interrupted run
    keeps what it measured; `finish` copies them to `latest.csv` / `latest.samples.csv`."""

    results_dir: Path
    env: Environment
    profile: str
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
        run = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "timestamp_utc": self.started.isoformat(timespec="seconds"),
            "profile": self.profile,
        }
        self.rows.append(run | result.row() | self.env.columns())
        if result.samples is not None:
            key = {k: v for k, v in result.row().items() if k in Case.__dataclass_fields__}
            device_ms = result.samples.device_ms or result.samples.host_ms
            for i, (primary, host) in enumerate(zip(device_ms, result.samples.host_ms, strict=True)):
                self.samples.append(
                    {"run_id": self.run_id, **key, "round": i, "latency_ms": primary, "host_latency_ms": host}
                )
        self._write(self.path)

    def frame(self) -> pd.DataFrame:
        return to_frame(self.rows)

    def _write(self, path: Path) -> None:
        write_csv_atomic(self.frame(), path)
        write_csv_atomic(pd.DataFrame(self.samples), samples_path(path))

    def finish(self) -> Path | None:
        """Copy the report to `latest.csv`; None when no case was recorded."""
        if not self.rows:
            return None
        latest = self.results_dir / "latest.csv"
        for src, dst in ((self.path, latest), (samples_path(self.path), samples_path(latest))):
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        return self.path


class BenchSession:
    """Measures cases on demand (a whole interleaving group at a time) and records them."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        malloc = pin_glibc_malloc() if config.pin_malloc else "default (not pinned)"
        self._threads = torch_threads(config.threads)
        self._threads.__enter__()
        self.env = collect_environment(cpu_malloc=malloc)
        self.writer = ReportWriter(config.results_dir, self.env, config.profile.name)
        self._devices: dict[str, Device] = {}
        self._groups: dict[Case, dict[str, CaseResult]] = {}

    def skip_reason(self, case: Case) -> str | None:
        return unavailable_reason(case.device)

    def _device(self, kind: str) -> Device:
        if kind not in self._devices:
            self._devices[kind] = make_device(kind)
        return self._devices[kind]

    def inference_result(self, case: Case) -> CaseResult:
        """The result of `case`, measuring its group (all modes, interleaved) the first time;
        the result is added to the report."""
        group = case.group
        if group not in self._groups:
            self._groups[group] = measure_inference_group(
                get_model(case.model),
                self._device(case.device),
                case.batch_size,
                self.config.profile,
                self.config.modes,
            )
        result = self._groups[group][case.mode]
        self.writer.add(result)
        return result

    def close(self) -> Path | None:
        """Finish the report (copy to latest.csv) and restore torch's thread count."""
        try:
            return self.writer.finish()
        finally:
            self._threads.__exit__(None, None, None)
