"""Selecting from the store: cases by label pattern, and their figures as per-run rows and
per-commit series of one fingerprint."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_lib.config import tool_table
from bench_lib.errors import UserError
from bench_lib.history.changepoints import (
    FASTEST,
    STEP_METRICS,
    Series,
    Step,
    StepRules,
    mark_machine_wide,
    series_points,
)
from bench_lib.history.store import Store

DEFAULT_BRANCH = "main"


@dataclass(frozen=True)
class HistoryConfig:
    """`[tool.bench_lib.history]`: the default branch and the latency step rules (`db` is read
    by the store)."""

    branch: str = DEFAULT_BRANCH
    rules: StepRules = field(default_factory=StepRules)


def load_config(pyproject: Path | None = Path("pyproject.toml")) -> HistoryConfig:
    table = tool_table(pyproject, "history")
    table.pop("db", None)
    branch = table.pop("branch", DEFAULT_BRANCH)
    known = set(StepRules.__dataclass_fields__)
    unknown = set(table) - known
    if unknown:
        raise UserError(
            f"[tool.bench_lib.history]: unknown settings {sorted(unknown)} (known: db, branch, {', '.join(sorted(known))})"
        )
    try:
        rules = StepRules(**table)
    except TypeError as exc:
        raise UserError(f"[tool.bench_lib.history]: {exc}") from None
    return HistoryConfig(str(branch), rules)


def matching_cases(store: Store, patterns: Sequence[str]) -> dict[str, int]:
    """Labels (and ids) matching any of the shell-style patterns; a pattern without wildcards
    matches labels that contain it. No pattern: every case."""
    labels = store.labels()
    if not patterns:
        return dict(sorted(labels.items()))
    globs = [p if any(ch in p for ch in "*?[") else f"*{p}*" for p in patterns]
    found = {lab: i for lab, i in labels.items() if any(fnmatch.fnmatchcase(lab, g) for g in globs)}
    if not found:
        raise UserError(f"no case in {store.name} matches {' '.join(patterns)} ({len(labels)} cases stored)")
    return dict(sorted(found.items()))


def machine_of(row: dict[str, Any]) -> str:
    """How a fingerprint reads to people."""
    threads = row.get("torch_threads")
    device = row.get("gpu_name") or row.get("cpu_model") or "?"
    return f"{row.get('hostname') or '?'} ({device}, {threads} thread{'s' if threads != 1 else ''})"


def resolve_fingerprint(store: Store, machine: str | None) -> str | None:
    """A fingerprint from a prefix of it, of a machine id, or a host name; None: every machine."""
    if not machine:
        return None
    found = {
        r["fingerprint"]
        for r in store.list_runs()
        if r["fingerprint"].startswith(machine)
        or r["machine_id"].startswith(machine)
        or r["hostname"] == machine
    }
    if not found:
        raise UserError(f"no machine {machine!r} in {store.name} (a fingerprint, machine id or host name)")
    if len(found) > 1:
        raise UserError(f"machine {machine!r} is ambiguous: fingerprints {', '.join(sorted(found))}")
    return found.pop()


def grouped(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Rows by (label, fingerprint, metric), in time order."""
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault((row["label"], row["fingerprint"], row["metric"]), []).append(row)
    return out


def clean(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that are a commit's figures: committed code (not `-dirty`), nothing injected."""
    return [r for r in rows if not r["dirty"] and r["commit"] and not r["inject"]]


def branch_series(
    store: Store,
    patterns: Sequence[str],
    branch: str,
    metrics: Sequence[str] = STEP_METRICS,
    fingerprint: str | None = None,
) -> list[Series]:
    """Every (case, fingerprint, metric) series of clean runs on `branch`."""
    ids = matching_cases(store, patterns)
    rows = store.series_rows(list(ids.values()), list(metrics), branch=branch, fingerprint=fingerprint)
    out = []
    for (label, fp, metric), group in grouped(clean(rows)).items():
        exact = metric.endswith("_bytes")
        out.append(Series(fp, machine_of(group[-1]), label, metric, series_points(group, exact)))
    return out


def with_machine_wide(store: Store, steps: list[Step], branch: str, rules: StepRules) -> list[Step]:
    """`steps` with machine-wide ones marked, judged against every latency series of their
    machine on `branch` (not only the cases searched): only the values are needed, no search."""
    fingerprints = {s.fingerprint for s in steps if not s.exact}
    if not fingerprints:
        return steps
    ids = list(store.labels().values())
    peers = []
    for fp in sorted(fingerprints):
        rows = store.series_rows(ids, [FASTEST], branch=branch, fingerprint=fp)
        for (label, _fp, metric), group in grouped(clean(rows)).items():
            peers.append(Series(fp, machine_of(group[-1]), label, metric, series_points(group, False)))
    return mark_machine_wide(steps, peers, rules)
