"""`bench_lib export`: one run's figures in the formats of services teams already run.

- `bmf`: Bencher Metric Format JSON, `{benchmark: {measure: {value, lower_value, upper_value}}}`.
  Benchmarks are case labels; `latency` is Bencher's built-in measure in nanoseconds (value: the
  median; lower and upper: the fastest round and the 90th percentile), `throughput` its built-in
  items per second, and each memory figure a measure of its own named by its column
  (`mem-peak-bytes`, ...; Bencher creates a measure named by an unknown slug).
- `github-action-benchmark`: the `customSmallerIsBetter` JSON of github-action-benchmark, a list
  of `{name, unit, value, range, extra}`: `<label> latency` in ms (range: half the IQR) and
  `<label> <memory column>` in bytes.

Only cases whose status is ok are exported; the machine is the service's business (Bencher's
testbed, the workflow's runner), so export one run (one report) at a time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bench_lib.errors import UserError
from bench_lib.records.cases import Case
from bench_lib.records.schema import LATENCY, MEMORY_METRICS, read_report

FORMATS = ("bmf", "github-action-benchmark")


def _ok_rows(path: str | Path) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    frame = read_report(path)
    if "run_id" in frame and frame["run_id"].nunique() > 1:
        raise UserError(f"{path}: {frame['run_id'].nunique()} runs in one report: export one run at a time")
    return frame, [r for r in frame.to_dict("records") if r["status"] == "ok"]


def _number(row: dict[str, Any], column: str) -> float | None:
    value = row.get(column)
    return None if value is None or pd.isna(value) else float(value)


def to_bmf(path: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    _, rows = _ok_rows(path)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        measures: dict[str, dict[str, float]] = {}
        median = _number(row, LATENCY)
        if median is not None:
            latency = {"value": median * 1e6}
            for bound, column in (("lower_value", "latency_ms_min"), ("upper_value", "latency_ms_p90")):
                value = _number(row, column)
                if value is not None:
                    latency[bound] = value * 1e6
            measures["latency"] = latency
        throughput = _number(row, "throughput_items_per_s")
        if throughput is not None:
            measures["throughput"] = {"value": throughput}
        for metric in MEMORY_METRICS:
            value = _number(row, metric)
            if value is not None:
                measures[metric.replace("_", "-")] = {"value": value}
        if measures:
            out[Case.from_row(row).label] = measures
    return out


def to_github_action_benchmark(path: str | Path) -> list[dict[str, Any]]:
    _, rows = _ok_rows(path)
    out: list[dict[str, Any]] = []
    for row in rows:
        label = Case.from_row(row).label
        median = _number(row, LATENCY)
        if median is not None:
            entry: dict[str, Any] = {"name": f"{label} latency", "unit": "ms", "value": median}
            iqr = _number(row, "latency_ms_iqr")
            if iqr is not None:
                entry["range"] = f"± {iqr / 2:.4g}"
            rounds = _number(row, "rounds")
            entry["extra"] = f"median of {int(rounds)} rounds" if rounds is not None else "median"
            out.append(entry)
        for metric in MEMORY_METRICS:
            value = _number(row, metric)
            if value is not None:
                out.append({"name": f"{label} {metric}", "unit": "bytes", "value": int(value)})
    return out


def export(path: str | Path, fmt: str) -> str:
    """The run of one report as `fmt` JSON text."""
    if fmt == "bmf":
        data: Any = to_bmf(path)
    elif fmt == "github-action-benchmark":
        data = to_github_action_benchmark(path)
    else:
        raise UserError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    if not data:
        raise UserError(f"{path}: no successful case to export")
    return json.dumps(data, indent=2) + "\n"
