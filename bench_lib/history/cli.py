"""`python -m bench_lib history add|show|report|regressions|gate|runs|remove` and `export`.

The parsers are added to `bench_lib.cli`'s; every command opens the store named by `--db`, else
`$BENCH_HISTORY_DB`, else `[tool.bench_lib.history] db`, else `results/history.sqlite`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DB_HELP = (
    "history database: a file (SQLite) or postgresql://user@host/db (default: $BENCH_HISTORY_DB, "
    "else db in [tool.bench_lib.history], else results/history.sqlite)"
)


def _store(args: argparse.Namespace) -> Any:
    from bench_lib.cli import config_file
    from bench_lib.history.store import Store

    return Store.open(args.db, config_file(args.config))


def _config(args: argparse.Namespace) -> Any:
    from bench_lib.cli import config_file
    from bench_lib.history.series import load_config

    return load_config(config_file(args.config))


def _write(text: str, out: str | None) -> None:
    from bench_lib.cli import _write as write

    write(text, out)


def _metrics(text: str | None, default: str = "DEFAULT_METRICS") -> tuple[str, ...]:
    from bench_lib.history import changepoints

    if not text:
        return getattr(changepoints, default)
    return tuple(m.strip() for m in text.split(",") if m.strip())


def _progress(a: Any) -> None:
    print(f"{a.outcome:7} {a.run_id} ({a.cases} cases) from {a.source} in {a.seconds:.2f} s", flush=True)


def _add_share(db: str | None, config: Path | None, paths: list[str], branch: str | None) -> list[Any]:
    """One worker of `history add --jobs N`: its own connection, its share of the reports."""
    from bench_lib.history.ingest import add_reports
    from bench_lib.history.store import Store

    with Store.open(db, config) as store:
        return add_reports(store, paths, branch=branch, progress=_progress)


def cmd_add(args: argparse.Namespace) -> int:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from bench_lib.cli import config_file, report_files

    args.reports = [str(p) for spec in args.reports for p in report_files(spec)]  # folders: their reports
    jobs = min(args.jobs, len(args.reports))
    with _store(args) as store:
        name = store.name
        if jobs == 1:
            done = _add_share(args.db, config_file(args.config), args.reports, args.branch)
        else:  # readers in parallel; the store takes several writers at once
            with store.writing():
                pass  # create the tables once, before the workers race for it
            shares = [args.reports[i::jobs] for i in range(jobs)]
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = [
                    pool.submit(_add_share, args.db, config_file(args.config), share, args.branch)
                    for share in shares
                ]
                done = [a for f in futures for a in f.result()]
    added = sum(a.outcome == "added" for a in done)
    print(f"{added} run(s) added, {len(done) - added} already present: {name}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from bench_lib.history.report import render_show, trends
    from bench_lib.history.series import resolve_fingerprint

    config = _config(args)
    with _store(args) as store:
        found = trends(store, args.patterns, config.branch, config.rules, _metrics(args.metric), args.branch,
                       resolve_fingerprint(store, args.machine), args.last)  # fmt: skip
    print(render_show(found, config.branch))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bench_lib.errors import UserError
    from bench_lib.history.report import render_html, render_markdown, trends
    from bench_lib.history.series import resolve_fingerprint

    if args.format == "html" and not args.out:
        raise UserError("--format html needs --out FILE")
    config = _config(args)
    with _store(args) as store:
        found = trends(store, args.patterns, config.branch, config.rules, _metrics(args.metric), args.branch,
                       resolve_fingerprint(store, args.machine), args.last)  # fmt: skip
        name = store.name
    if args.format == "html":
        _write(render_html(found, name, config.branch), args.out)
    else:
        plots = Path(args.out).with_name(Path(args.out).stem + "_plots") if args.out else None
        _write(render_markdown(found, name, config.branch, plots), args.out)
    return 0


def cmd_regressions(args: argparse.Namespace) -> int:
    from bench_lib.history.changepoints import detect
    from bench_lib.history.report import render_regressions
    from bench_lib.history.series import branch_series, resolve_fingerprint, with_machine_wide

    config = _config(args)
    branch = args.branch or config.branch
    with _store(args) as store:
        metrics = _metrics(args.metric, "STEP_METRICS")
        series = branch_series(
            store, args.patterns, branch, metrics, resolve_fingerprint(store, args.machine)
        )
        found = [s for one in series for s in detect(one, config.rules)]
        steps = with_machine_wide(store, found, branch, config.rules)
    steps.sort(key=lambda s: (s.time, s.label, s.metric), reverse=True)
    print(render_regressions(steps, branch, not args.all, len(series)))
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from bench_lib import gate
    from bench_lib.cli import emit_verdicts, gate_config, report_files
    from bench_lib.history import gate as history_gate

    config = gate_config(args)
    branch = args.branch or _config(args).branch
    candidate = gate.load_side(report_files(args.candidate), "run")
    fp = history_gate.candidate_fingerprint(candidate)
    own = set(candidate.frame["run_id"].dropna().astype(str)) if "run_id" in candidate.frame else set()
    with _store(args) as store:
        history = history_gate.load_history(store, fp, branch, args.last, exclude=sorted(own))
        print(history_gate.describe(history, store))
    verdicts = history_gate.history_gate(history, candidate, config, fp, branch)
    return emit_verdicts(verdicts, args)


def cmd_runs(args: argparse.Namespace) -> int:
    from bench_lib.history.series import machine_of

    with _store(args) as store:
        runs = store.list_runs(**({"branch": args.branch} if args.branch is not None else {}))
    for r in runs[-args.last :] if args.last else runs:
        flags = ",".join(f for f, on in (("dirty", r["dirty"]), (f"inject={r['inject']}", r["inject"])) if on)
        print(f"{r['run_id']}  {r['timestamp_utc']:%Y-%m-%d %H:%M:%S}  {r['commit'][:10] or '?':10}  "
              f"{r['branch'] or '?':12}  {r['profile']:8}  {machine_of(r)} [{r['fingerprint']}]  {flags}".rstrip())  # fmt: skip
    print(f"{len(runs)} run(s)")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with _store(args) as store:
        removed = store.remove_runs(args.run_ids)
        print(f"removed {removed} run(s) from {store.name}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bench_lib.history.export import export

    _write(export(args.report, args.format), args.out)
    return 0


def whole_number(text: str) -> int:
    """An option's count: a whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return n


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help=DB_HELP)
    p.add_argument(
        "--config",
        help="file with [tool.bench_lib.history]; 'none': the defaults alone (default: pyproject.toml, where there is one)",
    )


def _selection(p: argparse.ArgumentParser, branch_help: str) -> None:
    p.add_argument(
        "patterns", nargs="*", help="case label patterns (globs; a plain word matches labels containing it)"
    )
    p.add_argument("--branch", help=branch_help)
    p.add_argument(
        "--machine", help="a fingerprint, machine id (prefix) or host name (default: every machine)"
    )
    p.add_argument(
        "--metric", help="comma-separated figures (default: latency_ms_median and the memory figures)"
    )


def add_commands(sub: Any) -> None:
    """Add `history` (with its subcommands) and `export` to the top-level subparsers."""
    h = sub.add_parser(
        "history", help="the results history: add runs, trends, change points, gate against it"
    )
    hsub = h.add_subparsers(dest="history_command", required=True, parser_class=type(h))

    add = hsub.add_parser(
        "add", help="add reports (and their samples) to the history; adding twice changes nothing"
    )
    add.add_argument("reports", nargs="+", help="CSV reports, or folders of them (every run in the folder)")
    add.add_argument(
        "--jobs",
        type=whole_number,
        default=1,
        help="reports read in parallel by this many processes (default 1)",
    )
    add.add_argument(
        "--branch",
        help="branch of the runs (default: $BENCH_BRANCH, $GITHUB_HEAD_REF, $GITHUB_REF_NAME, "
        "$CI_COMMIT_BRANCH, else the checked-out branch when HEAD is the report's commit)",
    )
    _common(add)
    add.set_defaults(func=cmd_add)

    show = hsub.add_parser("show", help="figures per case and machine over commits and time")
    _selection(show, "only runs of this branch (default: every branch)")
    show.add_argument("--last", type=whole_number, help="only the last N runs of each case and machine")
    _common(show)
    show.set_defaults(func=cmd_show)

    rep = hsub.add_parser("report", help="trend plots per case (HTML or Markdown), change points marked")
    _selection(rep, "only runs of this branch (default: every branch)")
    rep.add_argument("--format", choices=["html", "md"], default="html")
    rep.add_argument("--out", help="write here (html needs it; md writes its plots beside it)")
    rep.add_argument("--last", type=whole_number, help="only the last N runs of each case and machine")
    _common(rep)
    rep.set_defaults(func=cmd_report)

    reg = hsub.add_parser(
        "regressions", help="steps on the default branch, newest first, with the commits to bisect"
    )
    _selection(reg, "branch (default: branch in [tool.bench_lib.history], else main)")
    reg.epilog = "Searched by default: latency_ms_min (each run's fastest round) and the memory figures."
    reg.add_argument("--all", action="store_true", help="improvements too")
    _common(reg)
    reg.set_defaults(func=cmd_regressions)

    g = hsub.add_parser(
        "gate",
        help="gate a candidate against the last N runs of its machine on a branch (exit codes as gate)",
        description="Exit 0 cleared, 1 regression, 2 bad input, 3 undecided, as `bench_lib gate`.",
    )
    g.add_argument("candidate", help="candidate report, or a folder of reports")
    g.add_argument(
        "--branch", help="branch of the history (default: branch in [tool.bench_lib.history], else main)"
    )
    g.add_argument("--last", type=whole_number, default=20, help="history runs to gate against (default 20)")
    g.add_argument(
        "--latency-threshold", type=float, help="slowdown that counts, as a fraction (default 0.10)"
    )
    g.add_argument("--alpha", type=float, help="significance level (default 0.01)")
    g.add_argument(
        "--margin", type=float, help="slowdown the test must establish (default: half the threshold)"
    )
    g.add_argument("--memory-slack", type=int, help="bytes of memory change tolerated (default 0)")
    g.add_argument("--only", choices=["memory", "latency"], help="gate only these metrics")
    g.add_argument("--md", help="also write the verdicts as Markdown here")
    g.add_argument("--json", help="also write the verdicts as JSON here")
    _common(g)
    g.set_defaults(func=cmd_gate)

    runs = hsub.add_parser("runs", help="list the stored runs")
    runs.add_argument("--branch", help="only this branch")
    runs.add_argument("--last", type=whole_number, help="only the last N")
    _common(runs)
    runs.set_defaults(func=cmd_runs)

    rm = hsub.add_parser("remove", help="remove runs from the history")
    rm.add_argument("run_ids", nargs="+")
    _common(rm)
    rm.set_defaults(func=cmd_remove)

    ex = sub.add_parser("export", help="a report as Bencher BMF or github-action-benchmark JSON")
    ex.add_argument("report", help="a CSV report (one run)")
    ex.add_argument("--format", choices=["bmf", "github-action-benchmark"], required=True)
    ex.add_argument("--out", help="write to this file instead of standard output")
    ex.set_defaults(func=cmd_export)
