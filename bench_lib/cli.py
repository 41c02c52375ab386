"""`python -m bench_lib run | report | compare | precision | gate | history | export`: one `UserError` boundary; exit 0, 1 (a
case failed, or the gate found a regression), 2 (bad input, an OS error), 3 (the gate could not decide), 130 (Ctrl-C)
or 141 (standard output closed, as by `| head`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from bench_lib.errors import UserError
from bench_lib.options import add_run_arguments

if TYPE_CHECKING:  # pandas takes ~0.6 s to import (also through records.schema): `history show` needs none
    import pandas as pd

DEFAULT_REPORT = Path("results/latest.csv")
BROKEN_PIPE = 141  # what a shell reports for a writer stopped by a closed pipe (128 + SIGPIPE): no verdict


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, like every other bad input
        raise UserError(f"{self.prog}: {message}")


def load_results(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Read and validate one or more reports into one typed DataFrame (for notebooks too)."""
    from bench_lib.records.schema import read_report

    if not paths:
        raise UserError("no report given")
    import pandas as pd

    return pd.concat([read_report(p) for p in paths], ignore_index=True)


def _write(text: str, out: str | None) -> None:
    if out:
        from bench_lib.records.schema import write_text_atomic

        write_text_atomic(Path(out), text)
        print(f"wrote {out}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def cmd_run(args: argparse.Namespace) -> int:
    """Measure models (yours or the zoo's) without pytest: progress per case, then a summary."""
    from bench_lib.analysis.report import render_summary
    from bench_lib.options import run_values
    from bench_lib.session import BenchSession, RunConfig, unavailable
    from bench_lib.suites import SUITES

    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown or not suites:
        raise UserError(
            f"unknown suite {unknown[0] if unknown else args.suites!r} (known: {', '.join(SUITES)})"
        )
    config = RunConfig.parse(**run_values(args))
    cases = [c for name in SUITES if name in suites for c in config.cases_of(name)]
    for where in dict.fromkeys((c.device, c.dtype) for c in cases):
        reason = unavailable(next(c for c in cases if (c.device, c.dtype) == where))
        if reason:
            print(f"skipping {where[0]} {where[1]}: {reason}")
            cases = [c for c in cases if (c.device, c.dtype) != where]
    if not cases:
        raise UserError("nothing to measure: no case of the chosen suites, models and devices can run here")
    session = BenchSession(config, out=Path(args.out) if args.out else None)
    env = session.env
    print(
        f"{len(cases)} cases on {env.cpu_model}, torch {env.torch_version}, {env.torch_threads} thread(s)"
        f"{', ' + env.gpu_name if env.gpu_name else ''}; profile {config.profile.name}"
    )
    bad = 0
    try:
        for i, case in enumerate(cases, 1):
            result = session.result(case)
            median = f"{result.samples.stats().median:.3f} ms" if result.samples is not None else ""
            detail = median if result.ok else result.error
            print(f"[{i}/{len(cases)}] {case.label}: {result.status} {detail}".rstrip(), flush=True)
            bad += not result.ok
    except KeyboardInterrupt:
        print(f"interrupted: {len(session.writer.rows)} cases kept in {session.writer.path}", file=sys.stderr)
        session.close()
        return 130
    except BrokenPipeError:  # `run | head`: the progress has no reader; what was measured is kept
        session.close()
        print(
            f"stopped: standard output was closed; {len(session.writer.rows)} cases kept in {session.writer.path}",
            file=sys.stderr,
        )
        raise
    path = session.close()
    print(render_summary(session.writer.frame()))
    print(f"report: {path}" + ("" if args.out else f" (copied to {config.results_dir / 'latest.csv'})"))
    if bad:
        print(f"{bad} of {len(cases)} cases did not succeed (status and error are in the report)")
    return 1 if bad else 0


def load_modules(paths: Sequence[str | Path]) -> pd.DataFrame | None:
    """The by-module companions of reports (`*.modules.csv`) as one frame; None without any."""
    from bench_lib.records.schema import read_modules

    frames = [f for f in (read_modules(p) for p in paths) if f is not None]
    import pandas as pd

    return pd.concat(frames, ignore_index=True) if frames else None


def _one_run_per_case(frame: pd.DataFrame, paths: Sequence[str | Path]) -> None:
    """A report shows one measurement per case: reports that split a run's suites combine, but
    two runs of one case would show only the first (`compare` and `precision` read those)."""
    from bench_lib.records.cases import KEY_FIELDS, Case
    from bench_lib.records.schema import first_duplicate

    twice = first_duplicate(frame, list(KEY_FIELDS))
    if twice.empty:
        return
    row, ids = twice.iloc[0], list(twice["run_id"])
    if ids[0] == ids[1]:
        raise UserError(f"run {ids[0]} is given twice (the same report, or a copy of it)")
    if len(paths) == 1:
        raise UserError(
            f"{paths[0]} holds runs {ids[0]} and {ids[1]}, both of {Case.from_row(row.to_dict()).label}: a report "
            "shows one run per case; `compare` and `precision` take one file per run"
        )
    names = " ".join(str(p) for p in paths)
    raise UserError(
        f"runs {ids[0]} and {ids[1]} both measured {Case.from_row(row.to_dict()).label}: a report shows "
        f"one run per case; set runs side by side with `compare {names}`, or see their spread with "
        f"`precision {names}`"
    )


def cmd_report(args: argparse.Namespace) -> int:
    from bench_lib.analysis import report

    paths = args.reports or [DEFAULT_REPORT]
    import pandas as pd

    from bench_lib.records.schema import read_report

    frames = [read_report(p) for p in paths]
    for one, path in zip(frames, paths, strict=True):  # a file that holds two runs is named alone
        _one_run_per_case(one, [path])
    frame, modules = pd.concat(frames, ignore_index=True), load_modules(paths)
    _one_run_per_case(frame, paths)
    if args.format == "html" and not args.out:
        raise UserError("--format html needs --out FILE")
    render: dict[str, Callable[..., str]] = {
        "console": report.render_console,
        "md": report.render_markdown,
        "html": report.render_html,
    }
    _write(render[args.format](frame, modules=modules), args.out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bench_lib.analysis.compare import compare, render
    from bench_lib.records.schema import read_report

    frames = [read_report(p) for p in args.reports]
    _write(render(compare(frames), args.format), args.out)
    return 0


def cmd_precision(args: argparse.Namespace) -> int:
    from bench_lib.analysis.precision import distinct_names, render

    if len(args.reports) < 2:
        raise UserError("precision needs at least two reports (repeat runs of the same cases)")
    if not args.target > 0:
        raise UserError(f"--target must be > 0, got {args.target}")
    frames = load_results(args.reports[:1]), *(load_results([p]) for p in args.reports[1:])
    seen: dict[str, str] = {}
    for path, frame in zip(args.reports, frames, strict=True):
        for run in frame["run_id"].dropna().unique():
            if run in seen:
                raise UserError(
                    f"{seen[run]} and {path} hold the same run {run}: repeat runs must be different runs"
                )
            seen[run] = path
    _write(render(frames, distinct_names(args.reports), args.target), args.out)
    return 0


def report_files(spec: str) -> list[Path]:
    """A report, or a folder of reports (every run file in it: not latest.csv, not companions)."""
    path = Path(spec)
    if path.is_dir():
        from bench_lib.records.schema import is_companion

        runs = sorted(p for p in path.glob("*.csv") if p.name != "latest.csv" and not is_companion(p))
        if not runs:
            raise UserError(f"{path}: no report in this folder")
        return runs
    return [path]


GATE_HELP = """\
Gate a candidate against a baseline: a verdict for every case of the baseline.

exit codes (the last line printed says which, why, and the counts):
  0  every gated verdict cleared (an inconclusive latency test whose observed change stays within
     the threshold clears, and is counted apart)
  1  a regression: latency slower beyond the threshold and significantly beyond the margin; a
     memory figure that changed (smaller too: update the baseline); or a case that succeeded in the
     baseline and failed, ran out of memory or is absent in the candidate
  2  bad input (a missing or malformed report or samples file, bad options)
  3  undecided: nothing failed, but something could not be gated or decided: latency across
     different machine fingerprints, memory across torch builds, too few runs or too much noise
     while the observed slowdown is beyond the threshold, memory that differed between processes

Rules per case pattern in [tool.bench_lib.gate] may make latency, memory, missing cases, ungated
or inconclusive verdicts report-only (see the README)."""


def gate_config(args: argparse.Namespace) -> Any:
    """The gate's rules: `--config`'s `[tool.bench_lib.gate]`, the options given, and `--only`."""
    from bench_lib import gate

    overrides = {
        k: v
        for k, v in (
            ("latency_threshold", args.latency_threshold),
            ("alpha", args.alpha),
            ("margin", args.margin),
            ("memory_slack_bytes", args.memory_slack),
        )
        if v is not None
    }
    if args.only == "memory":
        overrides["latency"] = "report"
    elif args.only == "latency":
        overrides["memory"] = "report"
    return gate.load_config(config_file(args.config), overrides)


def config_file(value: str | None) -> Path | None:
    """`--config`: the file given, which must exist (a mistyped name must not turn the rules off
    unseen); "none" for the defaults alone; without one, ./pyproject.toml where there is one."""
    if value is None:
        return Path("pyproject.toml")
    if value == "none":
        return None
    path = Path(value)
    if not path.is_file():  # a pipe would be read once, and the settings are read more than once
        why = "a folder" if path.is_dir() else "not a regular file" if path.exists() else "no such file"
        raise UserError(f"--config {value}: {why} ('none' for the defaults)")
    return path


def emit_verdicts(verdicts: Sequence[Any], args: argparse.Namespace) -> int:
    """Print the verdicts (and write `--md` / `--json`); the gate's exit code."""
    from bench_lib import gate
    from bench_lib.records.schema import write_text_atomic

    if args.only:
        keep = gate.MEMORY_METRICS if args.only == "memory" else (gate.LATENCY,)
        verdicts = [v for v in verdicts if v.metric in keep or v.metric == "case"]
    if args.md:  # the files first: a closed standard output must not lose them
        write_text_atomic(Path(args.md), gate.render_markdown(verdicts))
    if args.json:
        write_text_atomic(Path(args.json), gate.render_json(verdicts))
    print(gate.render_console(verdicts))
    return gate.exit_code(verdicts)


def cmd_gate(args: argparse.Namespace) -> int:
    from bench_lib import gate

    config = gate_config(args)
    baseline, candidate = (
        gate.load_side(report_files(spec), args.unit) for spec in (args.baseline, args.candidate)
    )
    return emit_verdicts(gate.gate(baseline, candidate, config), args)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m bench_lib", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="measure models, e.g. your own: --model FILE.py:make_model (exit 1 when a case fails)",
    )
    add_run_arguments(run)
    run.add_argument(
        "--out", help="write the CSV report here (default: results/<run id>.csv and results/latest.csv)"
    )
    run.add_argument(
        "--suites", default="inference,finetune", help="inference, finetune, ruler (default: the first two)"
    )
    run.set_defaults(func=cmd_run)
    r = sub.add_parser("report", help="summarize one or more reports")
    r.add_argument("reports", nargs="*", help=f"CSV reports (default {DEFAULT_REPORT})")
    r.add_argument("--format", choices=["console", "md", "html"], default="console")
    r.add_argument("--out", help="write to this file instead of standard output")
    r.set_defaults(func=cmd_report)
    c = sub.add_parser("compare", help="compare reports from different machines or runs")
    c.add_argument("reports", nargs="+", help="two or more CSV reports; the first is the reference")
    c.add_argument("--format", choices=["console", "csv", "md", "html"], default="console")
    c.add_argument("--out", help="write to this file instead of standard output")
    c.set_defaults(func=cmd_compare)
    pr = sub.add_parser(
        "precision",
        help="how honest and tight the confidence intervals of repeat runs are (coverage, target met)",
    )
    pr.add_argument("reports", nargs="+", help="two or more reports of the same cases (repeat runs)")
    pr.add_argument("--target", type=float, default=0.01, help="relative half-width target (default 0.01)")
    pr.add_argument("--out", help="write to this file instead of standard output")
    pr.set_defaults(func=cmd_precision)
    g = sub.add_parser(
        "gate",
        help="regression gate: exit 0 cleared, 1 regression, 2 bad input, 3 undecided",
        description=GATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("baseline", help="baseline report, or a folder of reports (several runs)")
    g.add_argument("candidate", help="candidate report, or a folder of reports")
    g.add_argument(
        "--config",
        help="file with [tool.bench_lib.gate]; 'none': the defaults alone (default: pyproject.toml, where there is one)",
    )
    g.add_argument(
        "--latency-threshold", type=float, help="slowdown that counts, as a fraction (default 0.10)"
    )
    g.add_argument("--alpha", type=float, help="significance level of the Mann-Whitney U test (default 0.01)")
    g.add_argument(
        "--margin",
        type=float,
        help="slowdown the test must establish beyond the baseline (default: half the threshold)",
    )
    g.add_argument("--memory-slack", type=int, help="bytes of memory change tolerated (default 0)")
    g.add_argument("--only", choices=["memory", "latency"], help="gate only these metrics")
    g.add_argument(
        "--unit",
        choices=["run", "process"],
        default="run",
        help="independent latency sample: a run (default) or a worker process",
    )
    g.add_argument("--md", help="also write the verdicts as Markdown here")
    g.add_argument("--json", help="also write the verdicts as JSON here")
    g.set_defaults(func=cmd_gate)
    from bench_lib.history.cli import add_commands

    add_commands(sub)  # history add|show|report|regressions|gate|runs|remove, export
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head` closed the pipe: stop quietly (Python's documented way)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except OSError as exc:  # a path that is a folder, unwritable, unreadable, a full disk ...
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2


def os_error_line(exc: OSError) -> str:
    """An `OSError` as one line naming the path: "results/x.csv: Permission denied"."""
    where = exc.filename2 if isinstance(exc, IsADirectoryError) and exc.filename2 else exc.filename
    what = exc.strerror or str(exc)
    if isinstance(exc, FileExistsError) and exc.filename:  # mkdir(exist_ok=True) met a file or a link
        from bench_lib.records.schema import not_a_folder

        what = not_a_folder(exc.filename)
    return f"{where}: {what}" if where else what


def entry_point() -> None:
    """The `bench-lib` console script."""
    sys.exit(main())
