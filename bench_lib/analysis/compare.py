"""Joining reports from different machines or runs on the case key, computed before rendering."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from bench_lib.analysis.intervals import (
    NOT_OVERLAPPING,
    OVERLAPPING,
    REFERENCE,
    Estimate,
    format_estimate,
    intervals_overlap,
    overlap_text,
)
from bench_lib.errors import UserError
from bench_lib.records.cases import KEY_FIELDS, REFERENCE_MODE

# The metrics that carry a 95% interval (`<metric>_ci_low`, `<metric>_ci_high`, schema 5).
WITH_INTERVALS = ("latency_ms_median", "latency_ratio_to_grad", "latency_ratio_to_full")
METRICS = (
    "latency_ms_median",
    "latency_ratio_to_grad",
    "latency_ratio_to_full",
    "mem_peak_bytes",
    "mem_saved_for_backward_bytes",
    "mem_activations_bytes",
    "mem_optimizer_state_bytes",
)


@dataclass(frozen=True)
class Comparison:
    """Reports joined on the case key.

    `table` has the key columns, then for each metric the value from each report (columns
    `<metric> [<label>]`) and the ratio of each later report to the first
    (`<metric> ratio [<label>]`). For the metrics with intervals (`WITH_INTERVALS`), each value's
    interval (`<metric> ci_low [<label>]`, `... ci_high ...`) and whether each later report's
    interval overlaps the first's (`<metric> overlap [<label>]`: True, False, or NA where either
    report has no interval). `only_in` lists, per report label, the keys of the successful cases
    no other report has: shown, never silently dropped.
    """

    labels: tuple[str, ...]
    table: pd.DataFrame
    only_in: dict[str, pd.DataFrame] = field(default_factory=dict)


def machine_label(frame: pd.DataFrame) -> str:
    """ "<GPU or CPU model> / torch <version>" from a report's fingerprint."""
    first = frame.iloc[0]

    def text(column: str) -> str:
        value = first.get(column)
        return "" if value is None or pd.isna(value) else str(value)

    hardware = text("gpu_name") or text("cpu_model") or "unknown machine"
    return f"{hardware} / torch {text('torch_version') or '?'}"


def _labels(frames: Sequence[pd.DataFrame]) -> list[str]:
    labels = [machine_label(f) for f in frames]
    if len(set(labels)) < len(labels):  # the same machine twice: tell the runs apart
        labels = [f"{label} ({f['run_id'].iloc[0]})" for label, f in zip(labels, frames, strict=True)]
    if len(set(labels)) < len(labels):
        labels = [f"{label} #{i + 1}" for i, label in enumerate(labels)]
    return labels


def compare(frames: Sequence[pd.DataFrame], names: Sequence[str] | None = None) -> Comparison:
    """Join successful cases of `frames` on the case key (device kind, not device index).

    The calibration ruler's rows (suite `ruler`) join like any case: their ratio tells how much
    faster the machine itself was on fixed workloads. Dividing every latency by a ruler index
    (a `--normalize`) was measured and did not make machines comparable (see the README).
    """
    if len(frames) < 2:
        raise UserError("compare needs at least two reports")
    labels = list(names) if names else _labels(frames)
    keyed = []
    for frame in frames:
        ok = frame[frame["status"] == "ok"]
        metrics = [m for m in METRICS if m in ok]
        bounds = [f"{m}_ci_{end}" for m in WITH_INTERVALS for end in ("low", "high") if f"{m}_ci_{end}" in ok]
        keyed.append(ok.set_index(list(KEY_FIELDS))[metrics + bounds])
    common = keyed[0].index
    for k in keyed[1:]:
        common = common.intersection(k.index)
    if common.empty:
        raise UserError(
            "the reports have no case in common (compare joins on suite, model, device, mode, batch size, dtype, strategy, optimizer)"
        )
    columns = {}
    for metric in METRICS:
        values = [k.loc[common, metric] if metric in k else None for k in keyed]
        if all(v is None or v.isna().all() for v in values):
            continue
        for label, v in zip(labels, values, strict=True):
            columns[f"{metric} [{label}]"] = v
        estimates = _estimates(keyed, common, metric) if metric in WITH_INTERVALS else None
        if estimates is not None:
            for label, k in zip(labels, keyed, strict=True):
                for end in ("low", "high"):
                    bound = f"{metric}_ci_{end}"
                    columns[f"{metric} ci_{end} [{label}]"] = k.loc[common, bound] if bound in k else pd.NA
        for i, (label, v) in enumerate(zip(labels[1:], values[1:], strict=True), start=1):
            reference = values[0]
            assert reference is not None and v is not None
            columns[f"{metric} ratio [{label}]"] = (v.astype("Float64") / reference.astype("Float64")).astype(
                "Float64"
            )
            if estimates is not None:
                overlaps = [intervals_overlap(a, b) for a, b in zip(estimates[0], estimates[i], strict=True)]
                columns[f"{metric} overlap [{label}]"] = pd.array(overlaps, dtype="boolean")
    table = pd.DataFrame(columns, index=common).reset_index()
    only_in = {}
    for label, k in zip(labels, keyed, strict=True):
        alone = k.index.difference(common)
        if not alone.empty:
            only_in[label] = alone.to_frame(index=False)
    return Comparison(tuple(labels), table, only_in)


def _estimates(keyed: Sequence[pd.DataFrame], common: pd.Index, metric: str) -> list[list[Estimate]]:
    """Each report's `metric` with its interval, per common case."""
    out = []
    for k in keyed:
        rows = k.loc[common]
        low, high = (
            rows.get(f"{metric}_ci_{end}", pd.Series(pd.NA, index=rows.index)) for end in ("low", "high")
        )
        values = rows[metric] if metric in rows else pd.Series(pd.NA, index=rows.index)
        out.append([Estimate.of(v, lo, hi) for v, lo, hi in zip(values, low, high, strict=True)])
    return out


def summary(comparison: Comparison) -> list[str]:
    """The comparison's findings as sentences: per later report, its median latency against the
    first's (the median ratio over the common cases and their range), how many changes have
    non-overlapping intervals, the calibration ruler's ratios, and how many memory figures agree."""
    table, first = comparison.table, comparison.labels[0]
    out = []
    for label in comparison.labels[1:]:
        ratio = table.get(f"latency_ms_median ratio [{label}]")
        if ratio is None or ratio.dropna().empty:
            continue
        cases = table["suite"] != "ruler"
        values = ratio[cases].dropna().astype(float)
        if not values.empty:
            sentence = (
                f"{label} against {first}: median latency {values.median():.2f}x over {len(values)} common "
                f"cases (from {values.min():.2f}x to {values.max():.2f}x)"
            )
            overlap = table.get(f"latency_ms_median overlap [{label}]")
            known = overlap[cases].dropna() if overlap is not None else pd.Series(dtype="boolean")
            if len(known):
                apart = int((~known.astype(bool)).sum())
                sentence += f"; {apart} of {len(known)} cases with intervals in both have {NOT_OVERLAPPING}"
            else:
                sentence += "; no case has intervals in both reports, so none is marked"
            out.append(sentence + ".")
        ruler = table[table["suite"] == "ruler"]
        if not ruler.empty:
            parts = [
                f"{m} {r:.2f}x" for m, r in zip(ruler["mode"], ratio[ruler.index], strict=True) if pd.notna(r)
            ]
            out.append(
                f"{label}: the calibration ruler (the machine's own speed) ran " + ", ".join(parts) + "."
            )
        peak = table.get(f"mem_peak_bytes ratio [{label}]")
        if peak is not None and peak.notna().any():
            same = int((peak.dropna() == 1).sum())
            out.append(f"{label}: peak memory identical in {same} of {int(peak.notna().sum())} cases.")
    return out


def _key_columns(table: pd.DataFrame) -> list[str]:
    """The key columns that say something (not empty in every row)."""
    return [k for k in KEY_FIELDS if k in table and not (table[k].astype(str) == "").all()]


SHORT_NAMES = {
    "latency_ms_median": "median ms",
    "latency_ratio_to_grad": "/ grad",
    "latency_ratio_to_full": "/ full",
    "mem_peak_bytes": "peak",
    "mem_saved_for_backward_bytes": "saved for backward",
    "mem_activations_bytes": "activations",
    "mem_optimizer_state_bytes": "opt state",
}


def letters(comparison: Comparison) -> list[str]:
    """Short names of the reports in table headers: A (the first, the reference), B, ..."""
    return [chr(ord("A") + i) if i < 26 else f"R{i + 1}" for i in range(len(comparison.labels))]


def view(comparison: Comparison) -> pd.DataFrame:
    """The comparison formatted for people (strings), reports named by `letters`: each report's
    figure (with its interval), then each later report's ratio to the first (`B/A`), marked
    "non-overlapping intervals" or "overlapping intervals" where both reports have intervals.
    The latency ratios (to grad, to full) are not divided again: the later report's ratio
    itself carries the mark."""
    from bench_lib.analysis.report import format_bytes, format_ms_estimate

    table = comparison.table
    names = letters(comparison)
    out = table[_key_columns(table)].copy()
    for metric in METRICS:
        if f"{metric} [{comparison.labels[0]}]" not in table:
            continue
        short = SHORT_NAMES.get(metric, metric)
        for label, name in zip(comparison.labels, names, strict=True):
            values = table[f"{metric} [{label}]"]
            low = table.get(f"{metric} ci_low [{label}]", pd.Series(pd.NA, index=table.index))
            high = table.get(f"{metric} ci_high [{label}]", pd.Series(pd.NA, index=table.index))
            estimates = [Estimate.of(v, lo, hi) for v, lo, hi in zip(values, low, high, strict=True)]
            if metric.endswith("_bytes"):
                shown = [format_bytes(e.value) for e in estimates]
            elif metric == "latency_ms_median":
                shown = [format_ms_estimate(e) for e in estimates]
            else:  # the reference's ratio to itself is no measurement: "1 (reference)"
                own = _reference_rows(table, metric)
                shown = [
                    REFERENCE if mine and e.value == 1.0 else format_estimate(e)
                    for e, mine in zip(estimates, own, strict=True)
                ]
            if metric.startswith("latency_ratio") and name != names[0]:
                # a ratio's change is read on the ratio itself, not as a ratio of ratios
                overlap = table.get(f"{metric} overlap [{label}]", pd.Series(pd.NA, index=table.index))
                shown = [t + (f" ({overlap_text(o)})" if overlap_text(o) and t != REFERENCE else "") for t, o in zip(shown, overlap, strict=True)]  # fmt: skip
            out[f"{short} {name}"] = shown
        if metric.startswith("latency_ratio"):
            continue
        for label, name in zip(comparison.labels[1:], names[1:], strict=True):
            ratio = table[f"{metric} ratio [{label}]"]
            overlap = table.get(f"{metric} overlap [{label}]", pd.Series(pd.NA, index=table.index))
            out[f"{short} {name}/{names[0]}"] = [
                "-" if pd.isna(r) else f"{r:.3f}" + (f" ({overlap_text(o)})" if overlap_text(o) else "")
                for r, o in zip(ratio, overlap, strict=True)
            ]
    return out


def _reference_rows(table: pd.DataFrame, metric: str) -> list[bool]:
    """The rows of the cases a ratio column is relative to: eager grad for `/ grad`, `full` for
    `/ full` (with or without an interval: a run of one process records none)."""
    if metric == "latency_ratio_to_grad" and "mode" in table:
        eager = table["compile"].fillna("").eq("") if "compile" in table else True
        return list(table["mode"].eq(REFERENCE_MODE) & eager)
    if metric == "latency_ratio_to_full" and "strategy" in table:
        return list(table["strategy"].eq("full"))
    return [False] * len(table)


def legend(comparison: Comparison) -> list[str]:
    """ "A: <label> (the reference)", "B: <label>", ..."""
    return [
        f"{name}: {label}" + (" (the reference)" if i == 0 else "")
        for i, (name, label) in enumerate(zip(letters(comparison), comparison.labels, strict=True))
    ]


NBSP = "\u00a0"  # "(A = B)" stays on one line in a header


def same_memory_once(rows: pd.DataFrame, comparison: Comparison) -> pd.DataFrame:
    """`rows` of `view(comparison)` with each memory figure that every report measured the same,
    to the byte, in every row shown once, as `<figure> (A = B)`, its `B/A` columns (all 1.000)
    left out: byte counts are deterministic, so reports usually agree, and a table of a column
    per report and per ratio is too wide for a laptop screen. A figure that differs anywhere
    keeps all its columns."""
    names = letters(comparison)
    out = rows
    for metric, short in SHORT_NAMES.items():
        columns = [f"{short} {n}" for n in names]
        if not metric.endswith("_bytes") or len(names) < 2 or not all(c in out for c in columns):
            continue
        raw = comparison.table.loc[rows.index, [f"{metric} [{label}]" for label in comparison.labels]]
        first = raw.iloc[:, 0]
        same = [(raw[c] == first).fillna(False) | (raw[c].isna() & first.isna()) for c in raw.columns[1:]]
        if not all(s.all() for s in same):  # a figure one report lacks is no agreement
            continue
        at = list(out.columns).index(columns[0])
        merged = out[columns[0]]
        out = out.drop(columns=[*columns, *(f"{short} {n}/{names[0]}" for n in names[1:])], errors="ignore")
        out.insert(at, f"{short} ({f'{NBSP}={NBSP}'.join(names)})", merged)
    return out


def _html(comparison: Comparison) -> str:
    from bench_lib.analysis import html, plots

    shown = view(comparison)
    figures = plots.machine_ratios(comparison.table, comparison.labels)
    intro = "".join(f"<li>{html.esc(s)}</li>" for s in summary(comparison))
    reports = "".join(f"<li>{html.esc(line)}</li>" for line in legend(comparison))
    sections = [
        html.Section(
            "Findings",
            f'<p class="note">Ratios are each report against the first. A change is marked where both reports have '
            f"95% intervals: {NOT_OVERLAPPING} (a difference the intervals show) or {OVERLAPPING} (not told apart)."
            f"</p><ul>{intro}</ul><h3>Reports</h3><ul>{reports}</ul>",
        )
    ]
    by_model = html.Section(
        "Cases by model",
        '<p class="note">Per model and suite: each report\'s figure (A, B, ...: see Reports), then each later '
        "report's ratio to the first (B/A). Medians and ratios carry their 95% interval where measured.</p>",
    )
    for model in dict.fromkeys(shown["model"]):
        inner = "".join(html.figure(png, alt) for (m, alt), png in figures.items() if m == model)
        for suite in dict.fromkeys(shown.loc[shown["model"] == model, "suite"]):
            rows = shown[(shown["model"] == model) & (shown["suite"] == suite)].drop(columns="model")
            rows = rows.loc[:, [c for c in rows.columns if not (rows[c].astype(str).isin(["", "-"])).all()]]
            rows = same_memory_once(rows, comparison)
            keys = [k for k in KEY_FIELDS if k in rows and k not in ("model", "suite")]
            part, constant = html.split_constant_levels(rows.set_index(["suite", *keys]))
            inner += f"<h3>{html.esc(', '.join(constant) or str(suite))}</h3>" + html.table(
                part, wrap_intervals=True
            )
        id_ = html.anchor("model", str(model))
        by_model.body += html.collapsible(id_, str(model), inner)
        by_model.children.append((id_, str(model)))
    sections.append(by_model)
    for label, alone in comparison.only_in.items():
        sections.append(html.Section(f"Only in {label}", html.table(alone, index=False)))
    return html.page("bench_lib comparison", "; ".join(legend(comparison)), sections)


def render(comparison: Comparison, fmt: str) -> str:
    """The comparison as console text, CSV, Markdown or HTML."""
    table = comparison.table
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "html":
        return _html(comparison)
    shown = view(comparison)
    found = summary(comparison)
    missing = [(label, alone) for label, alone in comparison.only_in.items()]
    if fmt == "md":
        parts = ["# bench_lib comparison", "", *(f"- {line}" for line in legend(comparison)), ""]
        parts += [f"- {s}" for s in found] + ([""] if found else [])
        parts += [shown.to_markdown(index=False, disable_numparse=True)]
        for label, alone in missing:
            parts += ["", f"Only in `{label}`:", "", alone.to_markdown(index=False, disable_numparse=True)]
        return "\n".join(parts) + "\n"
    parts = ["Reports: " + "; ".join(legend(comparison)), *found, shown.to_string(index=False)]
    for label, alone in missing:
        parts += ["", f"Only in {label}:", alone.to_string(index=False)]
    return "\n".join(parts)
