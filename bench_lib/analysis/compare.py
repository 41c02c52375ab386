"""Joining reports from different machines or runs on the case key, computed before rendering."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from bench_lib.errors import UserError
from bench_lib.records.cases import KEY_FIELDS

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
    (`<metric> ratio [<label>]`). `only_in` lists, per report label, the keys of the successful
    cases no other report has: shown, never silently dropped.
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
        keyed.append(ok.set_index(list(KEY_FIELDS))[metrics])
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
        for label, v in zip(labels[1:], values[1:], strict=True):
            reference = values[0]
            assert reference is not None and v is not None
            columns[f"{metric} ratio [{label}]"] = (v.astype("Float64") / reference.astype("Float64")).astype(
                "Float64"
            )
    table = pd.DataFrame(columns, index=common).reset_index()
    only_in = {}
    for label, k in zip(labels, keyed, strict=True):
        alone = k.index.difference(common)
        if not alone.empty:
            only_in[label] = alone.to_frame(index=False)
    return Comparison(tuple(labels), table, only_in)


def render(comparison: Comparison, fmt: str) -> str:
    """The comparison as console text, CSV, Markdown or HTML."""
    table = comparison.table
    if fmt == "csv":
        return table.to_csv(index=False)
    shown = table.copy()
    for col in shown.columns:
        if " ratio [" in col:
            shown[col] = shown[col].map(lambda r: "-" if pd.isna(r) else f"{r:.3f}")
    missing = [(label, alone) for label, alone in comparison.only_in.items()]
    if fmt == "md":
        parts = ["# bench_lib comparison", "", "Reports: " + "; ".join(f"`{lbl}`" for lbl in comparison.labels), "",
                 shown.to_markdown(index=False, disable_numparse=True)]  # fmt: skip
        for label, alone in missing:
            parts += ["", f"Only in `{label}`:", "", alone.to_markdown(index=False, disable_numparse=True)]
        return "\n".join(parts) + "\n"
    if fmt == "html":
        import html

        parts = ["<h1>bench_lib comparison</h1>", shown.to_html(index=False, border=0)]
        for label, alone in missing:
            parts += [f"<h2>Only in {html.escape(label)}</h2>", alone.to_html(index=False, border=0)]
        return (
            '<!DOCTYPE html><html><head><meta charset="utf-8"><title>bench_lib comparison</title></head><body>'
            + "".join(parts)
            + "</body></html>"
        )
    parts = ["Reports: " + "; ".join(comparison.labels), shown.to_string(index=False)]
    for label, alone in missing:
        parts += ["", f"Only in {label}:", alone.to_string(index=False)]
    return "\n".join(parts)
