"""The report's Findings: plain sentences with the measured figures and their intervals, generated
from a report frame (never hand-written numbers), computed before any format renders them.

Per model, device and precision: what each grad mode saves against grad (time, with its interval,
and peak memory), and what each fine-tuning strategy saves against `full` (step time, with its
interval, and memory). Ratios are read by `intervals.describe_ratio`: an interval that contains
1.0 is "no measurable difference", and a figure without an interval claims nothing either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bench_lib.analysis.intervals import Estimate, describe_ratio, percent
from bench_lib.analysis.report import finetune_table, format_bytes, ordered_strategies, shown_optimizer
from bench_lib.records.cases import MODE_NAMES, REFERENCE_MODE


@dataclass(frozen=True)
class Finding:
    """What one comparison (`topic`: "Inference at batch 32, against grad") shows for one model
    on one device and precision (`subject`): one clause per mode or strategy (`items`).
    `headline`: it is about the largest batch size (and the shown optimizer), so it belongs on
    the first screen."""

    subject: str
    model: str
    topic: str
    items: tuple[str, ...]
    headline: bool

    @property
    def sentence(self) -> str:
        return f"{self.topic}: " + "; ".join(self.items) + "."


def subject(model: str, device: str, dtype: str) -> str:
    return f"{model} on {device}" + ("" if dtype == "float32" else f" ({dtype})")


def _memory_change(value: float, reference: float, what: str) -> str | None:
    """ "87% less peak memory (1.5 MiB vs 11.6 MiB)"; memory figures are exact byte counts. None
    when either figure is missing."""
    if pd.isna(value) or pd.isna(reference):
        return None
    if value == reference:
        return f"the same {what} ({format_bytes(value)})"
    pair = f"{format_bytes(value)} vs {format_bytes(reference)}"
    if not reference:
        return f"more {what} ({pair})"
    change = 1 - value / reference
    word = "less" if change > 0 else "more"
    return f"{percent(abs(change))} {word} {what} ({pair})"


def _inference(frame: pd.DataFrame) -> list[Finding]:
    ok = frame[(frame["suite"] == "inference") & (frame["status"] == "ok")]
    out = []
    for (model, device, dtype), group in ok.groupby(["model", "device", "dtype"], sort=False):
        batches = sorted(group["batch_size"].unique(), reverse=True)
        for batch in batches:
            rows = group[group["batch_size"] == batch]
            grad = rows[(rows["mode"] == REFERENCE_MODE) & (rows["compile"] == "")]
            reference_peak = grad["mem_peak_bytes"].iloc[0] if not grad.empty else pd.NA
            clauses = []
            order = {m: i for i, m in enumerate(MODE_NAMES)}
            others = rows[~rows.index.isin(grad.index)]
            others = others.assign(_o=others["mode"].map(order)).sort_values(["compile", "_o"])
            for _, row in others.iterrows():
                ratio = Estimate.from_row(row, "latency_ratio_to_grad")
                if ratio.value is None:
                    continue
                label = row["mode"] + (" compiled" if row["compile"] else "")
                time = describe_ratio(ratio, "less time", "more time", "grad")
                memory = _memory_change(row["mem_peak_bytes"], reference_peak, "peak memory")
                clauses.append(f"{label}: {time}" + (f", {memory}" if memory else ""))
            if clauses:
                topic = f"Inference at batch {batch}, against grad"
                out.append(
                    Finding(subject(model, device, dtype), model, topic, tuple(clauses), batch == batches[0])
                )
    return out


def _finetune(frame: pd.DataFrame) -> list[Finding]:
    table = finetune_table(frame)
    if table.empty:
        return []
    rows = table.reset_index()
    shown = shown_optimizer(rows)
    out = []
    for (model, device, dtype), group in rows.groupby(["model", "device", "dtype"], sort=False):
        batches = sorted(group["batch_size"].unique(), reverse=True)
        optimizers = sorted(dict.fromkeys(group["optimizer"]), key=lambda o: o != shown)
        for batch in batches:
            for optimizer in optimizers:
                cases = group[(group["batch_size"] == batch) & (group["optimizer"] == optimizer)]
                full = cases[cases["strategy"] == "full"]
                if full.empty:
                    continue
                full_total = full["mem_total_bytes"].iloc[0]
                clauses = []
                for strategy in ordered_strategies(cases["strategy"]):
                    if strategy == "full":
                        continue
                    row = cases[cases["strategy"] == strategy].iloc[0]
                    ratio = Estimate.from_row(row, "latency_ratio_to_full")
                    time = describe_ratio(ratio, "less step time", "more step time", "full")
                    memory = _memory_change(row["mem_total_bytes"], full_total, "memory")
                    clauses.append(f"{strategy}: {time}" + (f", {memory}" if memory else ""))
                if clauses:
                    topic = f"Fine-tuning at batch {batch} with {optimizer}, against full"
                    headline = batch == batches[0] and optimizer == optimizers[0]
                    out.append(Finding(subject(model, device, dtype), model, topic, tuple(clauses), headline))
    return out


def findings(frame: pd.DataFrame) -> list[Finding]:
    """Every finding of a report, grouped by subject in the report's order of models (headlines
    first)."""
    found = _inference(frame) + _finetune(frame)
    models = list(dict.fromkeys(frame["model"]))
    subjects = list(dict.fromkeys(f.subject for f in found))
    return sorted(found, key=lambda f: (models.index(f.model), subjects.index(f.subject), not f.headline))


FINDINGS_TEXT = (
    "Generated from the figures below. Ratios compare variants timed interleaved in the same worker "
    "processes (medians per process for inference, trimmed means of training steps for fine-tuning), "
    "with their 95% confidence interval across processes, widened for the spread between runs "
    "(ci_run_sd); an interval containing 1.0 is no measurable difference, and a "
    "figure without an interval (one process) claims nothing either way. Memory figures are exact."
)


def render_text(found: list[Finding], headlines_only: bool = False) -> str:
    """Findings as console text: per subject, one line per sentence."""
    lines = []
    for name in dict.fromkeys(f.subject for f in found):
        mine = [f for f in found if f.subject == name and (f.headline or not headlines_only)]
        if mine:
            lines.append(f"{name}:")
            for f in mine:
                lines.append(f"  {f.topic}:")
                lines += [f"    - {item}" for item in f.items]
    return "\n".join(lines)


def render_markdown(found: list[Finding]) -> str:
    """Findings as Markdown: the headlines per subject, the rest folded (<details>, GitHub shows it)."""
    lines = []
    for name in dict.fromkeys(f.subject for f in found):
        mine = [f for f in found if f.subject == name]
        lines.append(f"**{name}**")
        lines.append("")
        lines += [line for f in mine if f.headline for line in _markdown_items(f)]
        rest = [f for f in mine if not f.headline]
        if rest:
            lines += ["", "<details><summary>other batch sizes and optimizers</summary>", ""]
            lines += [line for f in rest for line in _markdown_items(f)]
            lines += ["", "</details>"]
        lines.append("")
    return "\n".join(lines)


def _markdown_items(f: Finding) -> list[str]:
    return [f"- {f.topic}:", *(f"  - {item}" for item in f.items)]
