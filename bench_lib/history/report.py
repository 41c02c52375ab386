"""History views: `history show` (the console), `history report` (Markdown or HTML with trend
plots: one line per machine fingerprint, change points marked) and `history regressions`.

Each view is computed first (`Trend`: the runs of one case on one fingerprint, and the steps of
its series on the default branch) and rendered afterwards by a small renderer.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench_lib.history.changepoints import (
    DEFAULT_METRICS,
    STEP_METRICS,
    Series,
    Step,
    StepRules,
    detect,
    series_points,
)
from bench_lib.history.series import clean, grouped, machine_of, matching_cases, with_machine_wide
from bench_lib.history.store import Store

MIB = 2**20


@dataclass(frozen=True)
class Run:
    """One run of one case: its figures by metric."""

    run_id: str
    time: datetime
    commit: str
    dirty: bool
    branch: str
    inject: str
    values: dict[str, float]


@dataclass(frozen=True)
class Trend:
    """One case on one fingerprint: its runs (oldest first) and the steps of each metric's series
    over the clean runs of the default branch."""

    label: str
    fingerprint: str
    machine: str
    metrics: tuple[str, ...]
    runs: tuple[Run, ...]
    steps: tuple[Step, ...]


def trends(
    store: Store,
    patterns: Sequence[str],
    default_branch: str,
    rules: StepRules,
    metrics: Sequence[str] = DEFAULT_METRICS,
    branch: str | None = None,
    fingerprint: str | None = None,
    last: int | None = None,
) -> list[Trend]:
    """Every (case, fingerprint) with runs on `branch` (None: every branch)."""
    ids = matching_cases(store, patterns)
    rows = store.series_rows(list(ids.values()), list(metrics), fingerprint=fingerprint)
    by_case: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault((row["label"], row["fingerprint"]), []).append(row)
    found: list[tuple[str, str, str, tuple[str, ...], tuple[Run, ...]]] = []
    searched: list[Series] = []
    for (label, fp), group in sorted(by_case.items()):
        runs: dict[str, Run] = {}
        for row in group:
            if branch is not None and row["branch"] != branch:
                continue
            run = runs.setdefault(
                row["run_id"],
                Run(
                    row["run_id"],
                    row["timestamp_utc"],
                    row["commit"],
                    row["dirty"],
                    row["branch"],
                    row["inject"],
                    {},
                ),
            )
            run.values[row["metric"]] = row["value"]
        if not runs:
            continue
        shown = tuple(runs.values())[-last:] if last else tuple(runs.values())
        present = tuple(m for m in metrics if any(m in r.values for r in shown))
        on_default = [
            r for r in clean(group) if r["branch"] == default_branch and r["metric"] in STEP_METRICS
        ]
        for (_label, _fp, metric), series_rows in grouped(on_default).items():
            exact = metric.endswith("_bytes")
            searched.append(
                Series(fp, machine_of(group[-1]), label, metric, series_points(series_rows, exact))
            )
        found.append((label, fp, machine_of(group[-1]), present, shown))
    steps = with_machine_wide(
        store, [s for one in searched for s in detect(one, rules)], default_branch, rules
    )
    return [
        Trend(
            label,
            fp,
            machine,
            present,
            shown,
            tuple(s for s in steps if (s.label, s.fingerprint) == (label, fp)),
        )
        for label, fp, machine, present, shown in found
    ]


def _value(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    return f"{int(value)}" if metric.endswith("_bytes") else f"{value:.4g}"


def describe(step: Step) -> str:
    """`latency_ms_median +10.3% (0.2841 -> 0.3134), p=2.1e-05` / `mem_peak_bytes +4096 bytes`."""
    if step.p_value is None:
        return f"{step.metric} {step.delta:+.0f} bytes ({_value(step.metric, step.before)} -> {_value(step.metric, step.after)})"
    change = f"{step.change:+.1%}" if step.change is not None else ""
    wide = " [machine-wide]" if step.machine_wide else ""
    return f"{step.metric} {change} ({step.before:.4g} -> {step.after:.4g}), p={step.p_value:.2g}{wide}"


def _aligned(cells: Sequence[object], widths: Sequence[int]) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def render_show(found: Sequence[Trend], default_branch: str) -> str:
    """Per case and machine: a table of its runs, steps marked on the first run of their commit."""
    if not found:
        return "no runs match"
    parts = []
    for trend in found:
        marks: dict[str, list[str]] = {}
        for step in trend.steps:
            marks.setdefault(step.commit, []).append(f"step: {describe(step)}; bisect {step.bisect}")
        header = ["time (UTC)", "commit", "branch", *trend.metrics, ""]
        lines = []
        for run in trend.runs:
            commit = run.commit[:10] + ("-dirty" if run.dirty else "")
            note = "; ".join(marks.pop(run.commit, [])) if not run.dirty else ""
            lines.append(
                [run.time.strftime("%Y-%m-%d %H:%M:%S"), commit or "?", run.branch or "?",
                 *(_value(m, run.values.get(m)) for m in trend.metrics), note]
            )  # fmt: skip
        widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]
        parts.append(f"{trend.label} on {trend.machine} [{trend.fingerprint}]: {len(trend.runs)} runs")
        parts += [_aligned(header, widths), *(_aligned(line, widths) for line in lines), ""]
    steps = sum(len(t.steps) for t in found)
    parts.append(f"{len(found)} case(s) x machine(s); {steps} step(s) on {default_branch} (marked)")
    return "\n".join(parts)


def render_regressions(steps: Sequence[Step], branch: str, only_regressions: bool, searched: int) -> str:
    """Newest first, with the commit range to bisect; machine-wide steps apart."""
    what = "regressions" if only_regressions else "steps"
    wide = [s for s in steps if s.machine_wide]
    steps = [s for s in steps if not s.machine_wide and (s.after > s.before or not only_regressions)]
    lines = [f"{len(steps)} {what} on {branch} in {searched} series" + (", newest first:" if steps else "")]
    for s in steps:
        confidence = "exact" if s.p_value is None else f"confidence {s.confidence:.4%}"
        lines.append(
            f"{s.time:%Y-%m-%d %H:%M}  {s.label}  {describe(s)}  [{confidence}; {s.n_before} commits before, "
            f"{s.n_after} after]  on {s.machine} [{s.fingerprint}]  bisect: git log {s.bisect}"
        )
    if wide:
        commits = sorted(
            {(s.fingerprint, s.commit[:10], s.time) for s in wide}, key=lambda x: x[2], reverse=True
        )
        lines.append(
            f"{len(wide)} machine-wide latency step(s), most cases of a machine at once (load on the machine, or a "
            "change that slowed everything: compare the ruler), not counted: "
            + ", ".join(f"{c} on [{fp}]" for fp, c, _t in commits)
        )
    return "\n".join(lines)


def plot_case(label: str, members: Sequence[Trend]) -> bytes:
    """One figure per case: a panel per metric, one line per machine fingerprint, steps on the
    default branch marked (a dashed line at the step's commit, its size beside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in DEFAULT_METRICS if any(m in t.metrics for t in members)]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.4 * len(metrics)), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        scale, unit = (1.0, "ms")
        if metric.endswith("_bytes"):
            biggest = max((r.values.get(metric, 0) for t in members for r in t.runs), default=0)
            scale, unit = (1 / MIB, "MiB") if biggest >= MIB else (1 / 1024, "KiB")
        for trend in members:
            points = [(r.time, r.values[metric] * scale) for r in trend.runs if metric in r.values]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(
                xs,
                ys,
                marker="o",
                markersize=3,
                linewidth=1,
                label=f"{trend.machine} [{trend.fingerprint[:6]}]",
            )
            for step in trend.steps:
                if step.metric != metric:
                    continue
                color = "tab:orange" if step.machine_wide else "red"  # the machine moved: not a regression
                ax.axvline(step.time, color=color, linestyle=":" if step.machine_wide else "--", linewidth=1)
                size = (
                    f"{step.change:+.1%}"
                    if step.p_value is not None and step.change is not None
                    else f"{step.delta:+.0f} B"
                )
                note = f"{size} @ {step.commit[:7]}" + (" (machine-wide)" if step.machine_wide else "")
                ax.annotate(note, (step.time, step.after * scale), color=color,
                            fontsize=8, xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_ylabel(f"{metric}\n({unit})", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(label)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _by_case(found: Sequence[Trend]) -> dict[str, list[Trend]]:
    out: dict[str, list[Trend]] = {}
    for t in found:
        out.setdefault(t.label, []).append(t)
    return out


def _summary_rows(found: Sequence[Trend]) -> list[list[str]]:
    rows = []
    for t in found:
        last = t.runs[-1]
        rows.append(
            [t.label, f"{t.machine} [{t.fingerprint}]", str(len(t.runs)), f"{last.time:%Y-%m-%d %H:%M}",
             *(_value(m, last.values.get(m)) for m in ("latency_ms_median", "mem_peak_bytes")),
             "; ".join(describe(s) + f" at {s.commit[:10]}" for s in t.steps)]
        )  # fmt: skip
    return rows


SUMMARY_HEADER = [
    "case",
    "machine",
    "runs",
    "latest run",
    "latest latency_ms_median",
    "latest mem_peak_bytes",
    "steps on the default branch",
]


def render_markdown(
    found: Sequence[Trend], store_name: str, default_branch: str, plots_dir: Path | None
) -> str:
    """Markdown: a summary table and, with `plots_dir`, a trend plot per case saved there."""
    lines = [f"# bench_lib history: {store_name}", "", f"Steps are found on `{default_branch}`.", ""]
    lines += ["| " + " | ".join(SUMMARY_HEADER) + " |", "|" + "---|" * len(SUMMARY_HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in _summary_rows(found)]
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        lines.append("")
        for label, members in _by_case(found).items():
            png = plots_dir / f"{label}.png"
            png.write_bytes(plot_case(label, members))
            lines += [f"## {label}", "", f"![{label}]({plots_dir.name}/{png.name})", ""]
    return "\n".join(lines) + "\n"


def render_html(found: Sequence[Trend], store_name: str, default_branch: str) -> str:
    """One self-contained page: the summary table, then a trend plot per case (embedded PNGs)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in SUMMARY_HEADER)
    body_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in _summary_rows(found)
    )
    parts = [
        f"<h1>bench_lib history</h1><p>{html.escape(store_name)}: {len(found)} case(s) x machine(s); "
        f"steps found on <code>{html.escape(default_branch)}</code> are marked in red, machine-wide ones (the machine moved) in orange.</p>",
        f"<table><tr>{head}</tr>{body_rows}</table>",
    ]
    for label, members in _by_case(found).items():
        data = base64.b64encode(plot_case(label, members)).decode()
        parts.append(
            f'<h2>{html.escape(label)}</h2><figure><img alt="{html.escape(label)}" src="data:image/png;base64,{data}"></figure>'
        )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #ddd}figure{margin:4px}"
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>bench_lib history</title>'
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
