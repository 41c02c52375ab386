"""`python -m bench_lib report | compare`: one `UserError` boundary, exit codes 0 / 2."""

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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
