"""Audit of change-point detection on a synthetic history built from real runs.

`python -m bench_lib.history.audit REPORT_OR_FOLDER... [--model mlp] [--step-at K]`

The real runs (all of one machine, unchanged code) are ordered by time and each becomes one
commit of `main` (a made-up commit id). Two stores are built through `history add`:

- unchanged: every step reported there is a false alarm;
- injected: from commit K on, the chosen model's cases are 10% slower (every latency figure
  and raw sample x 1.10) and peak 4 KiB (4096 bytes) more; the memory step must be found at
  K exactly, the latency steps within one commit of K, and nothing else.

Then, without a store, the same detector on the same series with the step at every position
that leaves `min_size` commits on either side: how often +10% is found, as a rate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench_lib.errors import UserError
from bench_lib.history.changepoints import FASTEST, Point, Series, Step, StepRules, detect_all
from bench_lib.history.ingest import add_reports
from bench_lib.history.series import branch_series
from bench_lib.history.store import Store
from bench_lib.records.schema import is_companion, samples_path

LATENCY_COLUMNS = ("latency_ms_median", "latency_ms_mean", "latency_ms_min", "latency_ms_p90", "latency_ms_p99",
                   "latency_ms_iqr", "latency_ms_stddev", "host_latency_ms_median")  # fmt: skip
SLOWER, EXTRA_BYTES = 1.10, 4096


def real_runs(specs: Sequence[str]) -> list[Path]:
    """Complete run reports (as many cases as the largest), oldest first."""
    paths = []
    for spec in specs:
        p = Path(spec)
        found = sorted(p.rglob("*.csv")) if p.is_dir() else [p]
        paths += [f for f in found if f.name != "latest.csv" and not is_companion(f)]
    if not paths:
        raise UserError("no report found")
    heads = {}
    for p in paths:
        try:
            heads[p] = pd.read_csv(p, dtype=str, keep_default_na=False)
        except (OSError, ValueError) as exc:  # pandas' ParserError is a ValueError
            raise UserError(f"{p}: not a report ({str(exc).splitlines()[0]})") from exc
        if "run_id" not in heads[p] or heads[p].empty:
            raise UserError(f"{p}: not a report (no run_id column or no rows)")
    full = max(len(v) for v in heads.values())
    unique = {  # no injected run: the history leaves those out
        str(v["run_id"].iloc[0]): p
        for p, v in heads.items()
        if len(v) == full and samples_path(p).is_file() and not v.get("inject", pd.Series([""])).iloc[0]
    }
    keep = list(unique.values())  # one file per run (a trial folder may be copied elsewhere)
    return sorted(keep, key=lambda p: str(heads[p]["timestamp_utc"].iloc[0]))


def commit_of(i: int) -> str:
    return hashlib.sha1(f"synthetic commit {i}".encode()).hexdigest()


def _write_history(runs: list[Path], folder: Path, model: str | None, step_at: int | None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(runs):
        report = pd.read_csv(src, dtype=str, keep_default_na=False)
        samples = pd.read_csv(samples_path(src), dtype=str, keep_default_na=False)
        report["git_commit"] = commit_of(i)
        if step_at is not None and i >= step_at:
            rows = report["model"] == model
            for column in LATENCY_COLUMNS:
                if column in report:
                    values = pd.to_numeric(report.loc[rows, column], errors="coerce") * SLOWER
                    report.loc[rows, column] = values.map(lambda v: "" if pd.isna(v) else repr(float(v)))
            peak = pd.to_numeric(report.loc[rows, "mem_peak_bytes"], errors="coerce") + EXTRA_BYTES
            report.loc[rows, "mem_peak_bytes"] = peak.map(lambda v: "" if pd.isna(v) else str(int(v)))
            srows = samples["model"] == model
            for column in ("latency_ms", "host_latency_ms"):
                samples.loc[srows, column] = (pd.to_numeric(samples.loc[srows, column]) * SLOWER).map(repr)
        dst = folder / src.name
        report.to_csv(dst, index=False)
        samples.to_csv(samples_path(dst), index=False)
        out.append(dst)
    return out


def replicate(runs: list[Path], n: int, folder: Path) -> list[Path]:
    """`n` runs for timing the store: the real runs cycled, each with its own run id, time (a
    minute apart) and commit; written as reports with their samples."""
    from datetime import UTC, datetime, timedelta

    folder.mkdir(parents=True, exist_ok=True)
    sources = [(pd.read_csv(p, dtype=str, keep_default_na=False),
                pd.read_csv(samples_path(p), dtype=str, keep_default_na=False)) for p in runs]  # fmt: skip
    out = []
    for i in range(n):
        report, samples = sources[i % len(sources)]
        when = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
        run_id = f"{when:%Y%m%dT%H%M%SZ}_{report['machine_id'].iloc[0]}"
        dst = folder / f"{run_id}.csv"
        report.assign(
            run_id=run_id, timestamp_utc=when.isoformat(timespec="seconds"), git_commit=commit_of(i)
        ).to_csv(dst, index=False)
        samples.assign(run_id=run_id).to_csv(samples_path(dst), index=False)
        out.append(dst)
    return out


def _store_steps(paths: list[Path], db: Path, rules: StepRules) -> tuple[list[Step], int]:
    with Store.open(db) as store:
        add_reports(store, paths, branch="main")
        series = branch_series(store, [], "main")
    return detect_all(series, rules), len(series)


def _summary(steps: list[Step]) -> dict:
    return {
        "steps": len(steps),
        "regressions": sum(s.regression for s in steps),
        "machine_wide": sum(s.machine_wide for s in steps),
        "listed": [f"{s.label} {s.metric} {s.change:+.1%} at commit {s.index} (p={s.p_value})" if s.p_value is not None
                   else f"{s.label} {s.metric} {s.delta:+.0f} B at commit {s.index}" for s in steps],
    }  # fmt: skip


def _series_of(paths: list[Path], metric: str) -> dict[str, list[float]]:
    from bench_lib.records.cases import Case

    out: dict[str, list[float]] = {}
    for p in paths:
        frame = pd.read_csv(p, dtype=str, keep_default_na=False)
        for row in frame.to_dict("records"):
            if row["status"] == "ok" and row.get(metric):
                out.setdefault(Case.from_row(row).label, []).append(float(row[metric]))
    return out


def positions(paths: list[Path], model: str, rules: StepRules) -> dict:
    """+10% at every position: found within one commit, found exactly, other regressions."""
    latency, memory = _series_of(paths, FASTEST), _series_of(paths, "mem_peak_bytes")
    n = len(paths)
    found = exact = cases = other = mem_exact = 0
    for k in range(rules.min_size, n - rules.min_size + 1):
        series = []
        for label, values in latency.items():
            vals = [v * SLOWER if i >= k and f"-{model}-" in label else v for i, v in enumerate(values)]
            series.append(_series(label, FASTEST, vals))
        for label, values in memory.items():
            vals = [v + EXTRA_BYTES if i >= k and f"-{model}-" in label else v for i, v in enumerate(values)]
            series.append(_series(label, "mem_peak_bytes", vals))
        steps = detect_all(series, rules)
        for label in latency:
            if f"-{model}-" not in label:
                continue
            cases += 1
            hits = [s for s in steps if s.label == label and s.metric == FASTEST and s.regression]
            found += any(abs(s.index - k) <= 1 for s in hits)
            exact += any(s.index == k for s in hits)
            mem_exact += any(
                s.label == label and s.metric == "mem_peak_bytes" and s.index == k for s in steps
            )
        other += sum(
            1 for s in steps if s.regression and not (f"-{model}-" in s.label and abs(s.index - k) <= 1)
        )
    return {"positions": n - 2 * rules.min_size + 1, "case_positions": cases, "latency_within_one": found,
            "latency_exact": exact, "memory_exact": mem_exact, "other_regressions": other}  # fmt: skip


def _series(label: str, metric: str, values: list[float]) -> Series:
    from datetime import datetime, timedelta

    points = tuple(
        Point(commit_of(i), datetime(2026, 1, 1) + timedelta(hours=i), v, 1) for i, v in enumerate(values)
    )
    return Series("audit", "audit", label, metric, points)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench_lib.history.audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("runs", nargs="+", help="real run reports, or folders of them (searched recursively)")
    p.add_argument("--model", default="mlp", help="the model whose cases get the step (default mlp)")
    p.add_argument(
        "--step-at", type=int, help="commit of the step in the injected store (default: the middle)"
    )
    p.add_argument("--json", help="write the figures here too")
    p.add_argument(
        "--replicate", type=int, help="only write this many runs (the real ones cycled) to --to, for timing"
    )
    p.add_argument("--to", help="folder for --replicate")
    args = p.parse_args(argv)
    try:
        runs = real_runs(args.runs)
        if args.replicate:
            if not args.to:
                raise UserError("--replicate needs --to FOLDER")
            written = replicate(runs, args.replicate, Path(args.to))
            print(f"wrote {len(written)} runs (from {len(runs)} real ones) to {args.to}")
            return 0
        rules = StepRules()
        k = args.step_at if args.step_at is not None else len(runs) // 2
        work = Path(tempfile.mkdtemp(prefix="history-audit-"))
        try:
            plain = _write_history(runs, work / "plain", None, None)
            unchanged, n_series = _store_steps(plain, work / "plain.sqlite", rules)
            injected_paths = _write_history(runs, work / "injected", args.model, k)
            injected, _ = _store_steps(injected_paths, work / "injected.sqlite", rules)
            sweep = positions(plain, args.model, rules)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen = [s for s in injected if f"-{args.model}-" in s.label]
    result = {
        "runs": len(runs), "first": runs[0].name, "last": runs[-1].name, "series": n_series, "rules": vars(rules),
        "unchanged": _summary(unchanged),
        "injected": {
            "model": args.model, "step_at": k,
            "memory_steps": sorted({s.index for s in chosen if s.metric == "mem_peak_bytes"}),
            "latency_steps": sorted(s.index for s in chosen if s.metric == FASTEST and s.regression),
            "other_regressions": _summary([s for s in injected if s.regression and s not in chosen]),
            "all": _summary(injected),
        },
        "sweep": sweep,
    }  # fmt: skip
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
