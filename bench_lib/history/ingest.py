"""`history add`: reports and their raw samples into the store, one transaction per run.

A report is read and validated as everywhere else (`bench_lib.records.schema.read_report`, which migrates
older schema versions; `bench_lib.gate.read_samples`). Each of its runs (one `run_id`; a report
written by bench_lib holds one) becomes one row of `runs` with its results, figures and samples,
all added in one transaction or not at all. A run already stored with the same content is left
as it is, so adding `results/latest.csv` beside the run file it copies changes nothing.

The branch of a run is not in the report: it is `--branch`, else `$BENCH_BRANCH`, else the CI's
own variable (`$GITHUB_HEAD_REF` of a pull request, `$GITHUB_REF_NAME`, GitLab's
`$CI_COMMIT_BRANCH`), else the branch checked out where the command runs when its HEAD is the
report's commit, else "" (unknown: such runs are shown, but no branch's trend includes them).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench_lib.errors import UserError
from bench_lib.gate import read_samples
from bench_lib.history.store import Store
from bench_lib.options import history_off
from bench_lib.records.cases import KEY_FIELDS, Case
from bench_lib.records.schema import COLUMN_NAMES, COLUMNS, read_report, samples_path

# Report columns that describe the run (one value per run), and the machine fingerprint within
# which latency figures are comparable (the gate's: machine, threads, malloc settings).
RUN_COLUMNS = (
    "schema_version", "run_id", "timestamp_utc", "profile", "inject",
    *COLUMN_NAMES[COLUMN_NAMES.index("machine_id") :],
)  # fmt: skip
FINGERPRINT = ("machine_id", "torch_threads", "cpu_malloc")
# Per-case numeric columns, stored in `figures`; per-case text columns, stored in `results.notes`.
FIGURES = tuple(
    c.name
    for c in COLUMNS
    if c.kind in ("int", "float") and c.name not in RUN_COLUMNS and c.name not in KEY_FIELDS
)
NOTES = tuple(
    c.name
    for c in COLUMNS
    if c.kind == "str"
    and c.name not in RUN_COLUMNS
    and c.name not in KEY_FIELDS
    and c.name not in ("status", "error")
)
BRANCH_VARIABLES = ("BENCH_BRANCH", "GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_BRANCH")
_INT_RUN_COLUMNS = {c.name for c in COLUMNS if c.kind == "int"} & set(RUN_COLUMNS)


@dataclass(frozen=True)
class Added:
    """What `history add` did with one run."""

    source: str
    run_id: str
    outcome: str  # "added" or "present"
    cases: int
    seconds: float


def fingerprint(machine_id: str, torch_threads: object, cpu_malloc: str) -> str:
    """A 12-hex-digit hash of what must match for latencies to be comparable."""
    return hashlib.sha256(f"{machine_id}|{torch_threads}|{cpu_malloc}".encode()).hexdigest()[:12]


def _git(args: Sequence[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def branch_resolver(explicit: str | None, cwd: Path | None = None) -> Callable[[str], str]:
    """A function from a run's commit to its branch (see the module docstring for the order)."""
    if explicit is not None:
        return lambda _commit: explicit
    for variable in BRANCH_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if value:
            return lambda _commit: value
    where = cwd or Path.cwd()
    head = _git(["rev-parse", "HEAD"], where)
    name = _git(["rev-parse", "--abbrev-ref", "HEAD"], where) if head else ""
    name = "" if name == "HEAD" else name  # detached
    return lambda commit: name if head and commit == head else ""


def _text(value: object) -> str:
    return "" if value is None or pd.isna(value) else str(value)


def _original_version(path: Path) -> int:
    with path.open(newline="") as f:
        row = next(csv.DictReader(f), None) or {}
    try:
        return int(row.get("schema_version") or 0)
    except ValueError:
        return 0


def _timestamp(value: str, where: str) -> datetime:
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"{where}: timestamp_utc {value!r} is not an ISO 8601 time") from None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC).replace(tzinfo=None)
    return stamp


def _samples_by_result(
    path: Path, frame: pd.DataFrame
) -> dict[tuple[str, tuple], dict[int, tuple[bytes, bytes]]]:
    """(run_id, case key) -> process -> (latency_ms, host_latency_ms) as float64 bytes, in round order."""
    companion = samples_path(path)
    if not companion.is_file():
        return {}
    raw = read_samples(companion, frame)
    if raw.empty:
        return {}
    rounds = pd.to_numeric(raw["round"], errors="coerce") if "round" in raw else pd.Series(range(len(raw)))
    host = (
        pd.to_numeric(raw["host_latency_ms"], errors="coerce")
        if "host_latency_ms" in raw
        else raw["latency_ms"]
    )
    by = ["run_id", *KEY_FIELDS, "process"]
    raw = raw.assign(
        _round=rounds.fillna(0).to_numpy(), host_latency_ms=host.fillna(raw["latency_ms"]).to_numpy()
    )
    raw = raw.sort_values([*by, "_round"], kind="stable").reset_index(drop=True)
    # one group after another: slice numpy arrays at the group boundaries (a groupby loop is slow)
    codes = raw.groupby(by, sort=False).ngroup().to_numpy()
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], len(raw)]
    latency, host_ms = raw["latency_ms"].to_numpy(dtype="<f8"), raw["host_latency_ms"].to_numpy(dtype="<f8")
    out: dict[tuple[str, tuple], dict[int, tuple[bytes, bytes]]] = {}
    for start, end, key in zip(
        starts, ends, raw.loc[starts, by].itertuples(index=False, name=None), strict=True
    ):
        run_id, process = key[0], int(key[-1])
        case_key = tuple(
            int(v) if f == "batch_size" else str(v) for f, v in zip(KEY_FIELDS, key[1:-1], strict=True)
        )
        out.setdefault((str(run_id), case_key), {})[process] = (
            latency[start:end].tobytes(),
            host_ms[start:end].tobytes(),
        )
    return out


def read_runs(
    path: str | Path, branch_of: Callable[[str], str]
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The runs of one report as (run row, result rows), validated; `UserError` on bad input."""
    path = Path(path)
    frame = read_report(path)
    if "run_id" not in frame or frame["run_id"].isna().any():
        raise UserError(f"{path}: rows without a run_id: cannot add them to the history")
    version = _original_version(path)
    by_result = _samples_by_result(path, frame)
    out = []
    for run_id, rows in frame.groupby("run_id", sort=False):
        first = rows.iloc[0]
        if _text(first.get("timestamp_utc")) == "":
            raise UserError(f"{path}: run {run_id} has no timestamp_utc")
        git_commit = _text(first.get("git_commit"))
        commit = git_commit.removesuffix("-dirty")
        run: dict[str, Any] = {}
        for column in RUN_COLUMNS:
            if column in ("schema_version", "timestamp_utc"):
                continue
            value = first.get(column)
            if column in _INT_RUN_COLUMNS:
                run[column] = None if value is None or pd.isna(value) else int(value)
            else:
                run[column] = _text(value)
        run |= {
            "timestamp_utc": _timestamp(_text(first["timestamp_utc"]), f"{path}, run {run_id}"),
            "fingerprint": fingerprint(run["machine_id"], run["torch_threads"], run["cpu_malloc"]),
            "commit": commit,
            "dirty": git_commit.endswith("-dirty"),
            "report_schema_version": version,
        }
        results, seen = [], set()
        for row in rows.to_dict("records"):
            case = Case.from_row(row)
            if case.key in seen:
                raise UserError(f"{path}: run {run_id} has case {case.label} twice")
            seen.add(case.key)
            results.append(
                {
                    "key": case.key,
                    "label": case.label,
                    "status": _text(row["status"]) or "ok",
                    "error": _text(row.get("error")),
                    "notes": {n: _text(row.get(n)) for n in NOTES if _text(row.get(n))},
                    "figures": {m: float(row[m]) for m in FIGURES if m in row and not pd.isna(row[m])},
                    "samples": by_result.get((str(run_id), case.key), {}),
                }
            )
        run["digest"] = _digest(run, results)
        run["branch"] = branch_of(commit)
        run["source"] = str(path)
        out.append((run, results))
    return out


def _digest(run: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """The content of a run (not where or when it was added): equal digests, equal runs."""
    h = hashlib.sha256()
    h.update(json.dumps({k: str(v) for k, v in sorted(run.items())}, sort_keys=True).encode())
    for r in sorted(results, key=lambda r: r["label"]):
        h.update(
            json.dumps(
                [r["label"], r["status"], r["error"], r["notes"], r["figures"]], sort_keys=True
            ).encode()
        )
        for process in sorted(r["samples"]):
            lat, host = r["samples"][process]
            h.update(str(process).encode() + lat + host)
    return h.hexdigest()


def add_reports(
    store: Store,
    paths: Sequence[str | Path],
    branch: str | None = None,
    cwd: Path | None = None,
    progress: Callable[[Added], None] | None = None,
) -> list[Added]:
    """Add every run of these reports; each run is atomic and adding one twice changes nothing."""
    if not paths:
        raise UserError("no report given")
    branch_of = branch_resolver(branch, cwd)
    done: list[Added] = []
    for path in paths:
        start = time.perf_counter()
        for run, results in read_runs(path, branch_of):
            run["ingested_at"] = datetime.now(UTC).replace(tzinfo=None)
            ids = store.case_ids([r["key"] for r in results], [r["label"] for r in results])
            outcome = store.add_run(run, results, ids)
            added = Added(str(path), run["run_id"], outcome, len(results), time.perf_counter() - start)
            done.append(added)
            if progress is not None:
                progress(added)
            start = time.perf_counter()
    return done


HISTORY_SETTINGS = "on, off, or a database (a path or a URL)"


def add_session_run(report: Path, setting: str, results_dir: Path, root: Path) -> str | None:
    """What `make bench` does at the end of a run: add it to the history and say so in one line.

    `setting` is `--bench-history`: "on" (the configured store, else `<results dir>/history.sqlite`),
    "off", or a database. A failure is reported, never fatal: the run's report is written already.
    """
    text = setting.strip()
    if history_off(text):
        return None
    if text.lower() in ("on", "1", "yes", "true"):
        text = ""
    try:
        from bench_lib.history.store import configured_db

        db = text or configured_db(root / "pyproject.toml") or str(results_dir / "history.sqlite")
        with Store.open(db, root / "pyproject.toml") as store:
            done = add_reports(store, [report], cwd=root)
            branch = store.list_runs(run_id=done[0].run_id)[0]["branch"] if done else ""
            return f"history: run {done[0].outcome} in {store.name} (branch {branch or 'unknown'})"
    except (UserError, OSError) as exc:  # e.g. a store in a folder that cannot be made
        return f"history: the run was not added ({exc})"
