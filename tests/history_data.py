"""Synthetic runs for the history tests: the small fixture report as one run per commit, with
seeded raw samples, and a latency scale or extra bytes to make steps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from bench_lib.records.cases import KEY_FIELDS
from bench_lib.records.schema import SAMPLE_COLUMNS, read_report, samples_path, write_csv_atomic

TEMPLATE = Path(__file__).resolve().parent / "data" / "small.csv"
LATENCY_COLUMNS = [
    "latency_ms_median", "latency_ms_mean", "latency_ms_min", "latency_ms_p90", "latency_ms_p99",
    "host_latency_ms_median",
]  # fmt: skip
START = datetime(2026, 1, 1, tzinfo=UTC)


def write_run(
    folder: Path,
    i: int,
    commit: str | None = None,
    scale: float = 1.0,
    mem_extra: int = 0,
    noise: float = 0.01,
    machine: str = "0123456789ab",
    processes: int = 2,
    rounds: int = 10,
    template: Path = TEMPLATE,
    models: tuple[str, ...] | None = None,
) -> Path:
    """Run `i` (an hour after run i - 1) of commit `commit` (default `c<i>`), as a report and
    its samples in `folder`; returns the report's path. `scale` and `mem_extra` apply to the
    cases of `models` (default: every case)."""
    when = START + timedelta(hours=i)
    run_id = f"{when:%Y%m%dT%H%M%SZ}_{machine}"
    rng = np.random.default_rng(i)
    frame = read_report(template)
    frame = frame.assign(
        run_id=run_id, timestamp_utc=when.isoformat(timespec="seconds"), machine_id=machine,
        git_commit=commit if commit is not None else f"{i:04x}{0:036x}",
    )  # fmt: skip
    ok = frame["status"] == "ok"
    chosen = frame["model"].isin(models) if models is not None else ok
    level = float(np.exp(rng.normal(0, noise)))
    for column in LATENCY_COLUMNS:
        factor = np.where(chosen, scale * level, level)
        frame[column] = (frame[column].astype("Float64") * factor).astype("Float64")
    frame.loc[ok & chosen & frame["mem_peak_bytes"].notna(), "mem_peak_bytes"] += mem_extra
    samples = []
    for row in frame[ok & frame["latency_ms_median"].notna()].to_dict("records"):
        key = {k: ("" if pd.isna(row[k]) else row[k]) for k in KEY_FIELDS}
        values = float(row["latency_ms_median"]) * np.exp(rng.normal(0, noise, processes * rounds))
        for j, value in enumerate(values):
            samples.append({"run_id": run_id, **key, "process": j // rounds, "round": j, "latency_ms": value,
                            "host_latency_ms": value})  # fmt: skip
    path = folder / f"{run_id}.csv"
    write_csv_atomic(frame, path)
    write_csv_atomic(pd.DataFrame(samples, columns=list(SAMPLE_COLUMNS)), samples_path(path))
    return path
