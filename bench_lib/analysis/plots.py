"""Figures for the HTML report and comparison (matplotlib, Agg), returned as PNG bytes.

Each figure answers one question and says so in its title: how much less time and memory each
grad mode takes than grad (ratios with their 95% intervals, 1.0 marked), what each fine-tuning
strategy saves against full (step-time ratio beside the stacked memory), where the memory goes,
and how each machine compares with the first. Colours are the Okabe-Ito palette (distinguishable
with the common colour-vision deficiencies); legends sit outside the axes, so they cover nothing.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from bench_lib.analysis.intervals import NO_DIFFERENCE, Difference, Estimate, ratio_difference
from bench_lib.records.cases import MODE_NAMES, REFERENCE_MODE

MIB = 2**20
# Okabe & Ito, "Color Universal Design" (2008): eight colours told apart under the common
# colour-vision deficiencies; black last (it is also the reference line's colour).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MODE_COLOURS = {"grad": "#000000", "no_grad": "#0072B2", "inference_mode": "#E69F00"}
STYLE: Any = {  # Any: matplotlib's stubs type rc_context's keys as literals
    "axes.prop_cycle": cycler(color=OKABE_ITO),
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
DPI = 100
PALETTE = 64
ROW_INCHES = 0.24


def _png(fig: plt.Figure) -> bytes:
    """The figure as a PNG of at most PALETTE colours: flat plots lose nothing visible and the
    page (every figure inline) gets about three times smaller."""
    from PIL import Image  # matplotlib's own dependency

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=PALETTE, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _ok(frame: pd.DataFrame, suite: str) -> pd.DataFrame:
    return frame[(frame["suite"] == suite) & (frame["status"] == "ok")]


def subject_of(model: str, device: str, dtype: str) -> str:
    return f"{model} on {device}" + ("" if dtype == "float32" else f" ({dtype})")


def _ratio_limits(estimates: Sequence[Estimate]) -> tuple[float, float]:
    """x limits (log scale) that hold every ratio and interval and 1.0, shared by the figures
    of one kind so that their ratios compare at a glance."""
    values = [v for e in estimates for v in (e.value, e.low, e.high) if v is not None and v > 0]
    low, high = min([1.0, *values]), max([1.0, *values])
    return low / 1.15, high * 1.15


TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 3, 5, 10, 20, 50, 100)


def _log_ratio_axis(ax: Axes, limits: tuple[float, float]) -> None:
    """A log x axis over `limits` labelled with plain ratios (0.5, 0.8, 1, 1.25 ...)."""
    ax.set_xscale("log")
    ax.set_xlim(*limits)
    ticks = [t for t in TICKS if limits[0] <= t <= limits[1]]
    if len(ticks) > 7:  # keep 1 and thin the rest
        step = math.ceil(len(ticks) / 7)
        ticks = sorted({1, *ticks[::step]} & set(ticks))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


MARKER_KEY = [
    Line2D([], [], marker="o", color="#555555", linestyle="-", label="interval excludes 1 (measurable)"),
    Line2D([], [], marker="o", color="#555555", markerfacecolor="white", linestyle="-", label="interval contains 1 (no measurable difference)"),
    Line2D([], [], marker="x", color="#555555", linestyle="", label="no interval"),
]  # fmt: skip


def _forest(ax: Axes, labels: list[str], estimates: list[Estimate], colours: list[str], limits: tuple[float, float], reference: str) -> None:  # fmt: skip
    """Dot-and-whisker rows on a log axis with 1.0 marked: filled where the interval excludes 1.0
    (a measurable difference), hollow where it contains it, grey crosses without an interval."""
    y = list(range(len(labels)))
    ax.axvline(1.0, color="#000000", linewidth=1, zorder=1.8)  # above the grid
    for i, (e, colour) in enumerate(zip(estimates, colours, strict=True)):
        if e.value is None:
            continue
        kind = ratio_difference(e)
        if e.low is not None and e.high is not None:
            ax.plot([e.low, e.high], [i, i], color=colour, linewidth=2, solid_capstyle="butt", zorder=2)
        if kind is Difference.UNKNOWN:
            ax.plot(e.value, i, marker="x", color=colour, markersize=6, zorder=3)
        else:
            face = "white" if kind is Difference.NONE else colour
            ax.plot(e.value, i, marker="o", color=colour, markerfacecolor=face, markersize=6, zorder=3)
    _log_ratio_axis(ax, limits)
    ax.set_yticks(y, labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_xlabel(f"time / {reference} (log; left of 1 = faster)")


def _rows_by_subject(ok: pd.DataFrame) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    return list(ok.groupby(["model", "device", "dtype"], sort=False))


def inference_ratios(frame: pd.DataFrame) -> dict[tuple[str, str], bytes]:
    """Per model, device and precision: each mode's time relative to grad with its 95% interval
    (left), and its peak memory relative to grad's (right), one row per batch size and mode.
    The time axis is shared by every model's figure."""
    ok = _ok(frame, "inference")
    order = {m: i for i, m in enumerate(MODE_NAMES)}
    panels = []
    model_of: dict[str, str] = {}
    for (model, device, dtype), group in _rows_by_subject(ok):
        grad = group[(group["mode"] == REFERENCE_MODE) & (group["compile"] == "")]
        peaks = grad.set_index("batch_size")["mem_peak_bytes"]
        rows = group.drop(grad.index)
        rows = rows.assign(o=rows["mode"].map(order)).sort_values(["batch_size", "compile", "o"], ascending=[False, True, True])  # fmt: skip
        rows = rows[rows["latency_ratio_to_grad"].notna()]
        if rows.empty:
            continue
        labels = [f"b{b} {m}{' compiled' if c else ''}" for b, m, c in zip(rows["batch_size"], rows["mode"], rows["compile"], strict=True)]  # fmt: skip
        estimates = [Estimate.from_row(r, "latency_ratio_to_grad") for _, r in rows.iterrows()]
        memory = [
            (r["mem_peak_bytes"] / peaks[b]) if b in peaks and pd.notna(peaks[b]) and peaks[b] and pd.notna(r["mem_peak_bytes"]) else math.nan
            for b, (_, r) in zip(rows["batch_size"], rows.iterrows(), strict=True)
        ]  # fmt: skip
        colours = [MODE_COLOURS.get(m, OKABE_ITO[2]) for m in rows["mode"]]
        panels.append((subject_of(model, device, dtype), labels, estimates, memory, colours))
        model_of[subject_of(model, device, dtype)] = model
    limits = _ratio_limits([e for p in panels for e in p[2]])
    out: dict[tuple[str, str], bytes] = {}
    with plt.rc_context(STYLE):
        for name, labels, estimates, memory, colours in panels:
            fig, (left, right) = plt.subplots(
                1, 2, figsize=(7.5, ROW_INCHES * len(labels) + 1.5), sharey=True, width_ratios=[3, 2],
                layout="constrained",
            )  # fmt: skip
            _forest(left, labels, estimates, colours, limits, "grad")
            right.barh(range(len(labels)), memory, color=colours, height=0.6)
            right.axvline(1.0, color="#000000", linewidth=1)
            right.set_xlim(0, max([1.05, *[m * 1.05 for m in memory if not math.isnan(m)]]))
            right.set_xlabel("peak memory / grad's peak")
            right.grid(axis="x", color="#dddddd", linewidth=0.6)
            for i, m in enumerate(memory):
                if not math.isnan(m):
                    right.text(m, i, f" {m:.2f}", va="center", fontsize=8)
            first = labels[0].split(" ", 1)  # the largest batch, the first mode
            memory_text = f" and {memory[0]:.2f}x its peak memory" if not math.isnan(memory[0]) else ""
            headline = f"{first[1]} at batch {first[0][1:]} {_takes(estimates[0], 'grad')}{memory_text}"
            fig.suptitle(f"{name}: {headline}", x=0.02, ha="left")
            fig.legend(handles=MARKER_KEY, loc="outside lower center", ncol=3, frameon=False, fontsize=7)
            out[(model_of[name], f"inference {name}")] = _png(fig)
    return out


CATEGORY_COLOURS = ("#56B4E9", "#E69F00", "#009E73", "#CC79A7")
FINETUNE_CATEGORIES = {
    "mem_params_bytes": "parameters",
    "mem_grads_bytes": "gradients",
    "mem_optimizer_state_bytes": "optimizer state",
    "mem_activations_bytes": "activations",
}


def finetune_ratios(frame: pd.DataFrame) -> dict[tuple[str, str], bytes]:
    """Per model, device and precision: each strategy's step time relative to full with its 95%
    interval (left) beside its memory stacked by category (right, MiB), one row per batch size,
    optimizer and strategy (full first, then as the report lists them). The time axis is shared."""
    ok = _ok(frame, "finetune")
    panels = []
    model_of: dict[str, str] = {}
    for (model, device, dtype), group in _rows_by_subject(ok):
        optimizers = {o: i for i, o in enumerate(dict.fromkeys(group["optimizer"]))}
        rows = group.assign(o=group["optimizer"].map(optimizers), later=group["strategy"] != "full")
        rows = rows.sort_values(["batch_size", "o", "later"], ascending=[False, True, True], kind="stable")
        labels = [f"b{b} {o} {s}" for b, o, s in zip(rows["batch_size"], rows["optimizer"], rows["strategy"], strict=True)]  # fmt: skip
        estimates = [Estimate.from_row(r, "latency_ratio_to_full") for _, r in rows.iterrows()]
        memory = rows[list(FINETUNE_CATEGORIES)].astype(float).fillna(0) / MIB
        estimates = [
            Estimate(None) if s == "full" else e for s, e in zip(rows["strategy"], estimates, strict=True)
        ]
        colours = [OKABE_ITO[0]] * len(labels)
        panels.append((subject_of(model, device, dtype), labels, estimates, memory, colours))
        model_of[subject_of(model, device, dtype)] = model
    limits = _ratio_limits([e for p in panels for e in p[2]])
    out: dict[tuple[str, str], bytes] = {}
    with plt.rc_context(STYLE):
        for name, labels, estimates, memory, colours in panels:
            fig, (left, right) = plt.subplots(
                1, 2, figsize=(7.5, ROW_INCHES * len(labels) + 1.8), sharey=True, width_ratios=[3, 2],
                layout="constrained",
            )  # fmt: skip
            _forest(left, labels, estimates, colours, limits, "full")
            left_edge = [0.0] * len(labels)
            for i, (column, label) in enumerate(FINETUNE_CATEGORIES.items()):
                values = memory[column].tolist()
                right.barh(range(len(labels)), values, left=left_edge, height=0.6, label=label, color=CATEGORY_COLOURS[i])  # fmt: skip
                left_edge = [a + b for a, b in zip(left_edge, values, strict=True)]
            right.set_xlabel("memory (MiB), stacked by category")
            right.grid(axis="x", color="#dddddd", linewidth=0.6)
            fig.suptitle(f"{name}: {_finetune_headline(labels, estimates, memory)}", x=0.02, ha="left")
            bars, names = right.get_legend_handles_labels()
            fig.legend(handles=[*MARKER_KEY, *bars], labels=[h.get_label() for h in MARKER_KEY] + names,
                       loc="outside lower center", ncol=4, frameon=False, fontsize=7)  # fmt: skip
            out[(model_of[name], f"fine-tuning {name}")] = _png(fig)
    return out


def _finetune_headline(labels: list[str], estimates: list[Estimate], memory: pd.DataFrame) -> str:
    """What the figure shows first: at the largest batch and first optimizer, the fastest
    strategy's step time and memory against full's."""
    group = labels[0].rsplit(" ", 1)[0]  # "b32 adamw"
    rows = [i for i, label in enumerate(labels) if label.rsplit(" ", 1)[0] == group]
    totals = memory.sum(axis=1).tolist()
    timed = [i for i in rows[1:] if estimates[i].value is not None]
    if not timed:
        return "what each fine-tuning strategy saves against full"
    best = min(timed, key=lambda i: estimates[i].value or math.inf)
    batch, optimizer, strategy = labels[best].split(" ")
    share = f" and {totals[best] / totals[rows[0]]:.0%} of its memory" if totals[rows[0]] else ""
    return f"at batch {batch[1:]} with {optimizer}, {strategy} {_takes(estimates[best], 'full', 'step time')}{share}"


def _takes(ratio: Estimate, of: str, what: str = "time") -> str:
    """A title's ratio, saying what its interval says: "takes 0.83x grad's time (95% CI
    0.81-0.85)", "takes 0.99x grad's time: no measurable difference (95% CI 0.97-1.01)", or
    "(no interval)" where one process measured it."""
    figure = f"takes {ratio.value:.2f}x {of}'s {what}"
    kind = ratio_difference(ratio)
    if kind is Difference.UNKNOWN:
        return f"{figure} (no interval)"
    ci = f"95% CI {ratio.low:.2f}-{ratio.high:.2f}"
    return f"{figure}: {NO_DIFFERENCE} ({ci})" if kind is Difference.NONE else f"{figure} ({ci})"


def where_memory_goes(table: pd.DataFrame) -> dict[tuple[str, str], bytes]:
    """Per model, device, dtype and batch size: one bar per case (grad-mode inference's saved
    bytes and peak, no_grad's peak, each fine-tuning strategy's step peak), stacked by block
    (`report.where_memory_goes_table`), in MiB; the legend beside the axes."""
    if table.empty:
        return {}
    out: dict[tuple[str, str], bytes] = {}
    blocks = table.xs("block", level="by")
    with plt.rc_context(STYLE):
        for (model, device, dtype, batch), group in blocks.groupby(level=[0, 1, 2, 3], sort=False):
            shares = group.droplevel([0, 1, 2, 3])
            shares = shares[shares.index != "(total)"].astype(float).dropna(axis=1, how="all").fillna(0) / MIB
            fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(shares.columns) + 1.2))
            shares.T.iloc[::-1].plot.barh(ax=ax, stacked=True, width=0.7)
            ax.set_xlim(0, shares.sum().max() * 1.04 or 1)  # the longest bar whole, not cut at the edge
            ax.set_title(f"{subject_of(model, device, dtype)}, batch {batch}: which block holds the memory")
            ax.set_xlabel("MiB, by block")
            ax.set_ylabel("")
            ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
            out[(model, f"where the memory goes: {model} {device} {dtype} b{batch}")] = _png(fig)
    return out


def case_names(group: pd.DataFrame) -> list[str]:
    """A row label per case of one model: suite, batch, then the device and dtype where the
    model's cases differ in them (a GPU run has four dtypes of every case), then the variant."""
    varying = [c for c in ("device", "dtype") if c in group and group[c].nunique() > 1]
    parts = ["suite", "batch_size", *varying, "mode", "optimizer", "strategy", "compile"]
    rows = group.reindex(columns=parts).astype("object").fillna("")
    return [
        " ".join(f"b{v}" if c == "batch_size" else str(v) for c, v in zip(parts, row, strict=True) if v)
        for row in rows.itertuples(index=False)
    ]


def machine_ratios(table: pd.DataFrame, labels: Sequence[str]) -> dict[tuple[str, str], bytes]:
    """For `compare`: per model, each later machine's median latency relative to the first's,
    one row per case; filled where the two intervals do not overlap, hollow where they do, a
    cross where either report has no interval. `table`: `Comparison.table`."""
    if table.empty or len(labels) < 2:
        return {}
    column = "latency_ms_median"
    ratios = [f"{column} ratio [{label}]" for label in labels[1:]]
    if not all(r in table for r in ratios):
        return {}
    all_values = [v for r in ratios for v in table[r].dropna().astype(float) if v > 0]
    low, high = min([1.0, *all_values]) / 1.15, max([1.0, *all_values]) * 1.15
    out: dict[tuple[str, str], bytes] = {}
    with plt.rc_context(STYLE):
        for model, group in table.groupby("model", sort=False):
            names = case_names(group)
            fig, ax = plt.subplots(figsize=(7.5, ROW_INCHES * len(names) + 1.6), layout="constrained")
            ax.axvline(1.0, color="#000000", linewidth=1, zorder=1.8)  # above the grid
            for j, (label, r) in enumerate(zip(labels[1:], ratios, strict=True)):
                colour = OKABE_ITO[j % (len(OKABE_ITO) - 1)]
                overlap = group.get(f"{column} overlap [{label}]")
                for i, value in enumerate(group[r]):
                    if pd.isna(value):
                        continue
                    state = None if overlap is None else overlap.iloc[i]
                    marker = "x" if state is None or pd.isna(state) else "o"
                    face = "white" if marker == "o" and bool(state) else colour
                    ax.plot(
                        float(value),
                        i,
                        marker=marker,
                        color=colour,
                        markerfacecolor=face,
                        markersize=6,
                        linestyle="",
                    )
            _log_ratio_axis(ax, (low, high))
            ax.set_yticks(range(len(names)), names)
            ax.set_ylim(len(names) - 0.5, -0.5)
            ax.grid(axis="x", color="#dddddd", linewidth=0.6)
            ax.set_xlabel("median latency / the first report's (log; left of 1 = faster)")
            title = f"{model}: each machine's time against the first"
            if len(ratios) == 1 and group[ratios[0]].notna().any():
                middle = group[ratios[0]].dropna().astype(float).median()
                title = f"{model}: {labels[1]} takes {middle:.2f}x the first's time (median of {group[ratios[0]].notna().sum()} cases)"
            ax.set_title(title, loc="left")
            key = [
                Line2D([], [], marker="o", color="#555555", linestyle="", label="intervals do not overlap"),
                Line2D([], [], marker="o", color="#555555", markerfacecolor="white", linestyle="", label="intervals overlap"),
                Line2D([], [], marker="x", color="#555555", linestyle="", label="no interval"),
            ]  # fmt: skip
            machines = [
                Line2D(
                    [], [], marker="o", color=OKABE_ITO[j % (len(OKABE_ITO) - 1)], linestyle="", label=label
                )
                for j, label in enumerate(labels[1:])
            ]
            fig.legend(handles=[*machines, *key], labels=[h.get_label() for h in [*machines, *key]],
                       loc="outside lower center", frameon=False, fontsize=7, ncol=3)  # fmt: skip
            out[(model, f"compare {model}")] = _png(fig)
    return out
