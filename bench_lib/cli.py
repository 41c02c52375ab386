"""`python -m bench_lib report | compare | gate`: one `UserError` boundary; exit 0, 1 (the gate
found a regression) or 2 (bad input)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench_lib.errors import UserError
from bench_lib.schema import write_text_atomic

DEFAULT_REPORT = Path("results/latest.csv")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        raise UserError(f"{self.prog}: {message}")


def load_results(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Read and validate one or more reports into one typed DataFrame (for notebooks too)."""
    from bench_lib.schema import read_report

    if not paths:
        raise UserError("no report given")
    return pd.concat([read_report(p) for p in paths], ignore_index=True)


def _write(text: str, out: str | None) -> None:
    if out:
        write_text_atomic(Path(out), text)
        print(f"wrote {out}")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def cmd_report(args: argparse.Namespace) -> int:
    from bench_lib import report

    frame = load_results(args.reports or [DEFAULT_REPORT])
    if args.format == "html" and not args.out:
        raise UserError("--format html needs --out FILE")
    render = {"console": report.render_console, "md": report.render_markdown, "html": report.render_html}
    _write(render[args.format](frame), args.out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from bench_lib.compare import compare, render
    from bench_lib.schema import read_report

    frames = [read_report(p) for p in args.reports]
    _write(render(compare(frames), args.format), args.out)
    return 0


def _side(spec: str) -> list[Path]:
    """A report, or a folder of reports (every run file in it: not latest.csv, not samples)."""
    path = Path(spec)
    if path.is_dir():
        runs = sorted(
            p for p in path.glob("*.csv") if p.name != "latest.csv" and not p.name.endswith(".samples.csv")
        )
        if not runs:
            raise UserError(f"{path}: no report in this folder")
        return runs
    return [path]


def cmd_gate(args: argparse.Namespace) -> int:
    from bench_lib import gate

    overrides = {
        k: v
        for k, v in (
            ("latency_threshold", args.latency_threshold),
            ("alpha", args.alpha),
            ("memory_slack_bytes", args.memory_slack),
        )
        if v is not None
    }
    if args.only == "memory":
        overrides["latency"] = "report"
    elif args.only == "latency":
        overrides["memory"] = "report"
    config = gate.load_config(Path(args.config), overrides)
    sides = [gate.load_side(_side(spec), args.unit) for spec in (args.baseline, args.candidate)]
    verdicts = gate.gate(*sides, config)
    if args.only:
        keep = gate.MEMORY_METRICS if args.only == "memory" else (gate.LATENCY,)
        verdicts = [v for v in verdicts if v.metric in keep or v.metric == "case"]
    print(gate.render_console(verdicts))
    if args.md:
        write_text_atomic(Path(args.md), gate.render_markdown(verdicts))
    if args.json:
        write_text_atomic(Path(args.json), gate.render_json(verdicts))
    return gate.exit_code(verdicts)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m bench_lib", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
    g = sub.add_parser("gate", help="regression gate: exit 0 pass, 1 regression, 2 bad input")
    g.add_argument("baseline", help="baseline report, or a folder of reports (several runs)")
    g.add_argument("candidate", help="candidate report, or a folder of reports")
    g.add_argument(
        "--config", default="pyproject.toml", help="file with [tool.bench_lib.gate] (default pyproject.toml)"
    )
    g.add_argument(
        "--latency-threshold", type=float, help="slowdown that counts, as a fraction (default 0.10)"
    )
    g.add_argument("--alpha", type=float, help="significance level of the Mann-Whitney U test (default 0.01)")
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
