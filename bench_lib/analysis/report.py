"""Summary tables computed from a report frame first, then rendered as text."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd

from bench_lib.analysis.intervals import REFERENCE, Estimate, format_estimate, format_ratio, intervals_overlap
from bench_lib.measure.telemetry import SLOWDOWNS
from bench_lib.records.cases import MODE_NAMES, REFERENCE_MODE, Case
from bench_lib.records.stats import MIN_ROUNDS_FOR_P99, NOISY_IQR_FRACTION

if TYPE_CHECKING:
    from bench_lib.analysis.findings import Finding


def format_bytes(n: float | None) -> str:
    """Binary units (KiB = 2^10 bytes, MiB = 2^20): "512 B", "8.0 KiB", "20.5 MiB"."""
    if n is None or (isinstance(n, float) and math.isnan(n)) or n is pd.NA:
        return "-"
    n = float(n)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def format_ms(ms: float | None) -> str:
    if ms is None or ms is pd.NA or (isinstance(ms, float) and math.isnan(ms)):
        return "-"
    return f"{ms:.{_ms_digits(ms)}f}"


def _ms_digits(ms: float) -> int:
    return 4 if ms < 0.1 else 3 if ms < 10 else 1


def format_ms_estimate(e: Estimate) -> str:
    """A median in ms with its interval: "8.000 ±0.120" (digits as `format_ms`)."""
    return "-" if e.value is None else format_estimate(e, _ms_digits(e.value))


BYTE_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))


def byte_unit(values: pd.DataFrame | pd.Series) -> tuple[str, int]:
    """The one unit (name, bytes) a table's memory columns are shown in: the largest that keeps
    its largest figure at 1 or more."""
    numbers = pd.to_numeric(pd.Series(values.to_numpy().ravel()), errors="coerce").abs()
    top = numbers.max() if numbers.notna().any() else 0
    return next(((name, size) for name, size in BYTE_UNITS if top >= size), ("B", 1))


def format_bytes_in(n: float | None, unit: tuple[str, int]) -> str:
    """Bytes in a fixed unit with two decimals ("11.56"); "<0.01" for a figure that would show
    as zero without being zero; whole bytes in B."""
    if n is None or n is pd.NA or (isinstance(n, float) and math.isnan(n)):
        return "-"
    value = float(n) / unit[1]
    if unit[1] == 1:
        return f"{value:.0f}"
    if value and abs(value) < 0.005:
        return "<0.01" if value > 0 else ">-0.01"
    return f"{value:.2f}"


def _estimates(table: pd.DataFrame, column: str, key: object = None) -> pd.Series:
    """A column and its interval columns of a (pivoted) table as `Estimate`s."""

    def get(name: str) -> pd.Series:
        full = name if key is None else (name, key)
        return table[full] if full in table.columns else pd.Series(pd.NA, index=table.index)

    lows, highs = get(f"{column}_ci_low"), get(f"{column}_ci_high")
    return pd.Series(
        [Estimate.of(v, lo, hi) for v, lo, hi in zip(get(column), lows, highs, strict=True)],
        index=table.index,
        dtype=object,
    )


INFERENCE_VALUES = [
    "latency_ms_median", "latency_ms_median_ci_low", "latency_ms_median_ci_high", "latency_ratio_to_grad",
    "latency_ratio_to_grad_ci_low", "latency_ratio_to_grad_ci_high", "mem_peak_bytes",
    "mem_saved_for_backward_bytes",
]  # fmt: skip


def inference_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per model, device and batch size; per mode the median latency (ms), the ratio to
    grad, their intervals, the allocator peak and the bytes saved for backward. Values stay numeric."""
    ok = frame[(frame["suite"] == "inference") & (frame["status"] == "ok")].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["compile"] = ok["compile"].replace("", "eager")
    values = [v for v in INFERENCE_VALUES if v in ok]
    table = ok.pivot_table(
        index=["model", "device", "dtype", "compile", "batch_size"],
        columns="mode",
        values=values,
        aggfunc="first",
        dropna=False,
    )
    modes = [m for m in MODE_NAMES if m in ok["mode"].unique()]
    table = table.reindex(columns=pd.MultiIndex.from_product([values, modes]))
    models = {m: i for i, m in enumerate(dict.fromkeys(ok["model"]))}  # the run's order, not A-Z
    table = table.sort_index(level="model", key=lambda level: level.map(models), sort_remaining=False)
    return table.dropna(how="all")  # dropna=False above also made index combinations never measured


def _mode_label(mode: str) -> str:
    return "inference" if mode == "inference_mode" else mode


def inference_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The inference table, formatted for people (strings; units in the headers)."""
    table = inference_table(frame)
    if table.empty:
        return table
    modes = list(table.columns.get_level_values(1).unique())
    out = pd.DataFrame(index=table.index)
    for mode in modes:
        label = _mode_label(mode)
        out[f"{label} (ms)"] = _estimates(table, "latency_ms_median", mode).map(format_ms_estimate)
        if mode != REFERENCE_MODE:
            out[f"{label} / grad"] = _estimates(table, "latency_ratio_to_grad", mode).map(format_ratio)
    memory = [("mem_peak_bytes", m) for m in modes]
    if REFERENCE_MODE in modes:
        memory.append(("mem_saved_for_backward_bytes", REFERENCE_MODE))
    unit = byte_unit(table[memory])
    for mode in modes:
        out[f"{_mode_label(mode)} peak ({unit[0]})"] = table[("mem_peak_bytes", mode)].map(
            lambda n: format_bytes_in(n, unit)
        )
    if REFERENCE_MODE in modes:
        saved = table[("mem_saved_for_backward_bytes", REFERENCE_MODE)]
        out[f"grad saved for backward ({unit[0]})"] = saved.map(lambda n: format_bytes_in(n, unit))
    out.index = out.index.set_names(["model", "device", "dtype", "compile", "batch"])
    return out


FINETUNE_MEMORY = [
    "mem_params_bytes",
    "mem_grads_bytes",
    "mem_optimizer_state_bytes",
    "mem_activations_bytes",
]


def finetune_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per model, device, batch size, optimizer and strategy (`full` first, the others
    as they come): step time and its interval, its ratio to `full` and its interval, each memory
    category, their total and its saving against `full` (bytes)."""
    ok = frame[(frame["suite"] == "finetune") & (frame["status"] == "ok")].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["mem_total_bytes"] = ok[FINETUNE_MEMORY].sum(axis=1)
    key = ["model", "device", "dtype", "batch_size", "optimizer"]
    full = ok[ok["strategy"] == "full"].set_index(key)["mem_total_bytes"].rename("full_total")
    ok = ok.join(full, on=key)
    ok["mem_saving_bytes"] = ok["full_total"] - ok["mem_total_bytes"]
    # each group: full first, then its strategies as the report lists them
    ok["group_"], ok["later_"] = ok.groupby(key, sort=False).ngroup(), ok["strategy"] != "full"
    ok = ok.sort_values(["group_", "later_"], kind="stable")
    cols = [
        "latency_ms_median",
        "latency_ms_median_ci_low",
        "latency_ms_median_ci_high",
        "latency_ratio_to_full",
        "latency_ratio_to_full_ci_low",
        "latency_ratio_to_full_ci_high",
        *FINETUNE_MEMORY,
        "mem_peak_bytes",
        "mem_total_bytes",
        "mem_saving_bytes",
    ]
    return ok.set_index([*key, "strategy"])[[c for c in cols if c in ok]]


FINETUNE_LABELS = {"mem_params_bytes": "params", "mem_grads_bytes": "grads", "mem_optimizer_state_bytes": "opt state",
                   "mem_activations_bytes": "activations", "mem_peak_bytes": "step peak", "mem_total_bytes": "total",
                   "mem_saving_bytes": "saved vs full"}  # fmt: skip


def finetune_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The fine-tuning table, formatted for people (strings; units in the headers)."""
    table = finetune_table(frame)
    if table.empty:
        return table
    out = pd.DataFrame(index=table.index)
    out["step (ms)"] = _estimates(table, "latency_ms_median").map(format_ms_estimate)
    ratios = _estimates(table, "latency_ratio_to_full").map(format_ratio)
    full = table.index.get_level_values(-1) == "full"  # the reference, with or without an interval
    out["step / full"] = ratios.where(~full | ratios.eq("-"), REFERENCE)
    unit = byte_unit(table[list(FINETUNE_LABELS)])
    for col, label in FINETUNE_LABELS.items():
        out[f"{label} ({unit[0]})"] = table[col].map(lambda n: format_bytes_in(n, unit))
    out.index = out.index.set_names(["model", "device", "dtype", "batch", "optimizer", "strategy"])
    return out


def finetune_best(frame: pd.DataFrame) -> pd.DataFrame:
    """Which cells of `finetune_view` are the best of their model, device, batch and optimizer
    (booleans, same index and columns): the smallest total memory (exact), and the shortest step
    together with every step whose interval overlaps its interval (not told apart from it)."""
    table = finetune_table(frame)
    view = finetune_view(frame)
    best = pd.DataFrame(False, index=view.index, columns=view.columns)
    if table.empty:
        return best
    levels = list(range(5))
    total = next(c for c in view.columns if c.startswith("total ("))
    memory = table["mem_total_bytes"].astype(float)
    best[total] = (memory == memory.groupby(level=levels, sort=False).transform("min")).to_numpy()
    steps = _estimates(table, "latency_ms_median")
    fastest = table["latency_ms_median"].astype(float).groupby(level=levels, sort=False).transform("idxmin")
    best["step (ms)"] = [
        key == quickest or bool(intervals_overlap(steps[key], steps[quickest]))
        for key, quickest in zip(table.index, fastest, strict=True)
    ]
    return best


WHERE_KEY = ["model", "device", "dtype", "batch_size"]
WHERE_TOTAL = "(total)"


def shown_optimizer(finetune: pd.DataFrame) -> str | None:
    """The optimizer whose fine-tuning strategies "Where the memory goes" shows: AdamW where
    measured (the usual fine-tuning choice), else the first one."""
    optimizers = list(dict.fromkeys(finetune["optimizer"]))
    return "adamw" if "adamw" in optimizers else (optimizers[0] if optimizers else None)


def where_memory_goes_table(modules: pd.DataFrame | None) -> pd.DataFrame:
    """Where each case's memory goes, from the by-module rows (`*.modules.csv`): one row per
    model, device, dtype, batch size and block (`by` = "block", with a `(total)` row equal to
    the cases' figures) or module type (`by` = "type"); columns: the bytes grad-mode inference
    saves for backward and each block's share of its peak, the same share of the no_grad peak,
    and of each fine-tuning strategy's step peak (one optimizer). Values stay numeric (bytes)."""
    if modules is None or modules.empty:
        return pd.DataFrame()
    rows = modules[modules["compile"] == ""].copy()
    rows["type"] = rows["module_type"].mask(
        rows["module_type"].isna() | (rows["module_type"] == ""), rows["module"]
    )
    inference = rows[rows["suite"] == "inference"]
    finetune = rows[rows["suite"] == "finetune"]
    optimizer = shown_optimizer(finetune)
    parts = [
        (inference[inference["mode"] == "grad"], "mem_saved_for_backward_bytes", "grad saved"),
        (inference[inference["mode"] == "grad"], "mem_peak_bytes", "grad peak"),
        (inference[inference["mode"] == "no_grad"], "mem_peak_bytes", "no_grad peak"),
    ]
    finetune = finetune[finetune["optimizer"] == optimizer]
    parts += [
        (finetune[finetune["strategy"] == s], "mem_peak_bytes", f"{s} peak")
        for s in ordered_strategies(finetune["strategy"])
    ]
    long = []
    for by in ("block", "type"):
        for part, metric, label in parts:
            if part.empty:
                continue
            values = part.groupby([*WHERE_KEY, by], sort=False)[metric].sum().reset_index()
            long.append(values.rename(columns={by: "name", metric: "bytes"}).assign(by=by, column=label))
    if not long:
        return pd.DataFrame()
    frame = pd.concat(long, ignore_index=True)
    index = [*WHERE_KEY, "by", "name"]
    order = list(dict.fromkeys(map(tuple, frame[index].itertuples(index=False))))
    table = frame.pivot_table(index=index, columns="column", values="bytes", aggfunc="sum")
    table = table.reindex(pd.MultiIndex.from_tuples(order, names=index))
    table = table[[label for _, _, label in parts if label in table.columns]]
    totals = table.xs("block", level="by").groupby(level=WHERE_KEY, sort=False).sum(min_count=1)
    totals.index = pd.MultiIndex.from_tuples(
        [(*key, "block", WHERE_TOTAL) for key in totals.index], names=index
    )
    table = table[table.fillna(0).ne(0).any(axis=1)]  # modules that hold nothing anywhere
    out = []
    for key in dict.fromkeys(k[: len(WHERE_KEY)] for k in order):
        rows = [k for k in table.index if k[: len(WHERE_KEY)] == key]
        out.append(table.loc[[k for k in rows if k[-2] == "block"]])
        out.append(totals.loc[[(*key, "block", WHERE_TOTAL)]])
        out.append(table.loc[[k for k in rows if k[-2] == "type"]])
    return pd.concat(out)


def ordered_strategies(strategies: pd.Series | list[str]) -> list[str]:
    """The fine-tuning strategies of a report: `full` (the reference) first, then the others in
    the order the report lists them (the suite's order; no strategy list is hard-coded here)."""
    seen = list(dict.fromkeys(strategies))
    return (["full"] if "full" in seen else []) + [s for s in seen if s != "full"]


def where_memory_goes_view(modules: pd.DataFrame | None) -> pd.DataFrame:
    """ "Where the memory goes", formatted for people (strings; the unit in the headers)."""
    table = where_memory_goes_table(modules)
    return table if table.empty else _where_view(table)


def _where_view(table: pd.DataFrame) -> pd.DataFrame:
    table = table.dropna(axis=1, how="all")
    unit = byte_unit(table)
    out = table.map(lambda n: format_bytes_in(n, unit))
    out.columns = [f"{c} ({unit[0]})" for c in out.columns]
    out.index = out.index.set_names(["model", "device", "dtype", "batch", "by", "name"])
    return out


def where_memory_goes_text(modules: pd.DataFrame | None) -> str:
    optimizer = shown_optimizer(modules[modules["suite"] == "finetune"]) if modules is not None else None
    return (
        "Which layer costs memory: per block (the fine-tuning blocks, else the top-level modules), "
        "then per module type, the bytes grad-mode inference saves for backward and, of the bytes "
        "live at each case's allocator peak, those the block allocated (in its forward, or in "
        "the backward of its ops: gradients included); (total) is the case's figure. What "
        "freezing block k saves: compare its share under full and frozen_k"
        + (f" (fine-tuning with {optimizer})." if optimizer else ".")
        + " Every module is in the *.modules.csv beside the report."
    )


ENVIRONMENT = ["machine_id", "cpu_model", "cpu_count", "gpu_name", "gpu_driver", "torch_version",
               "cuda_version", "python_version", "torch_threads", "cpu_malloc", "git_commit", "profile"]  # fmt: skip


def environment_view(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the machine fingerprint and the run's settings."""
    cols = [c for c in ENVIRONMENT if c in frame]
    runs = frame.groupby("run_id", sort=False)[cols].first()
    runs.index.name = "run"
    return runs.fillna("")


def ruler_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The calibration ruler: median ms of each fixed workload per device."""
    ok = frame[(frame["suite"] == "ruler") & (frame["status"] == "ok")]
    if ok.empty:
        return pd.DataFrame()
    table = ok.pivot_table(index="device", columns="mode", values="latency_ms_median", aggfunc="first")
    return table.map(format_ms)


def gpu_view(frame: pd.DataFrame) -> pd.DataFrame:
    """CUDA cases: device time (CUDA events) beside host time and their gap, input copies,
    energy, allocator figures, and the GPU's state around the case."""
    ok = frame[(frame["device"] == "cuda") & (frame["status"] == "ok") & (frame["suite"] != "ruler")]
    if ok.empty:
        return pd.DataFrame()
    out = pd.DataFrame(index=[Case.from_row(row).label for _, row in ok.iterrows()])
    out["device ms"] = ok["latency_ms_median"].map(format_ms).to_numpy()
    out["host ms"] = ok["host_latency_ms_median"].map(format_ms).to_numpy()
    out["gap ms"] = (ok["host_latency_ms_median"] - ok["latency_ms_median"]).map(format_ms).to_numpy()
    out["h2d pageable"] = ok["h2d_pageable_ms"].map(format_ms).to_numpy()
    out["h2d pinned"] = ok["h2d_pinned_ms"].map(format_ms).to_numpy()
    out["J/item"] = ok["energy_j_per_item"].map(_energy).to_numpy()
    out["W"] = ok["gpu_power_w"].map(lambda w: "-" if pd.isna(w) else f"{w:.0f}").to_numpy()
    out["max alloc"] = ok["cuda_max_allocated_bytes"].map(format_bytes).to_numpy()
    out["max reserved"] = ok["cuda_max_reserved_bytes"].map(format_bytes).to_numpy()
    clocks = ok["gpu_sm_clock_mhz_start"].astype("string").fillna("-") + "->"
    out["SM MHz"] = (clocks + ok["gpu_sm_clock_mhz_end"].astype("string").fillna("-")).to_numpy()
    out["throttle"] = ok["gpu_throttle_end"].fillna("-").to_numpy()
    out.index.name = "case"
    return out


def _energy(j: float | None) -> str:
    return "-" if j is None or pd.isna(j) else f"{j * 1e3:.3f} mJ" if j < 1 else f"{j:.2f} J"


def _gpu_flags(row: pd.Series) -> list[tuple[str, str]]:
    """Why a CUDA case's figures may be disturbed: other processes, clocks slowed down."""
    flags = []
    others = row.get("gpu_other_processes")
    if others is not None and not pd.isna(others) and others > 0:
        flags.append(("disturbed", f"{others} other process(es) on the GPU"))
    for when in ("start", "end"):
        reasons = row.get(f"gpu_throttle_{when}")
        if isinstance(reasons, str) and set(reasons.split("|")) & SLOWDOWNS:
            flags.append(("throttled", f"clock-event reasons at {when}: {reasons}"))
    return flags


def noise_view(frame: pd.DataFrame) -> pd.DataFrame:
    """Cases that failed, and successful ones whose figures are not trustworthy: IQR above 10%
    of the median, too few rounds for the p99 they report, memory that differed between worker
    processes, another process on the GPU, or GPU clocks slowed by power or temperature."""
    rows = []
    for _, row in frame.iterrows():
        label = Case.from_row(row).label
        if row["status"] != "ok":
            rows.append((label, row["status"], row["error"]))
            continue
        rows += [(label, flag, why) for flag, why in _gpu_flags(row)]
        varies = row.get("mem_disagreement")
        if isinstance(varies, str) and varies:
            rows.append((label, "memory varies", f"worker processes measured different bytes: {varies}"))
        if pd.isna(row["latency_ms_median"]):
            continue
        spread = row["latency_ms_iqr"] / row["latency_ms_median"] if row["latency_ms_median"] else 0
        if spread > NOISY_IQR_FRACTION:
            rows.append((label, "noisy", f"IQR is {spread:.0%} of the median"))
        if row["rounds"] < MIN_ROUNDS_FOR_P99:
            rows.append((label, "few rounds", f"p99 from only {row['rounds']} rounds"))
    return pd.DataFrame(rows, columns=["case", "flag", "why"])


# The report's own sections; each suite adds its sections between them (`Suite.report_sections`).
BEFORE_SUITES = (("Environment", environment_view, "The machines and settings the figures come from."),)
AFTER_SUITES = (
    (
        "GPU",
        gpu_view,
        "CUDA cases: median device time (CUDA events) and host time per call and their gap (launch and "
        "dispatch overhead), input copy to the GPU from pageable and pinned memory, energy per item and "
        "mean power (NVML), allocator peaks, SM clock before->after and clock-event reasons after.",
    ),
    ("Noise and failures", noise_view, "Cases whose figures should not be trusted, and why."),
)


WHERE = "Where the memory goes"


def sections(frame: pd.DataFrame, modules: pd.DataFrame | None = None) -> list[tuple[str, str, pd.DataFrame]]:
    """The report's sections, computed (title, explanation, table); empty tables left out.
    `modules`: the by-module rows (`*.modules.csv`), for "Where the memory goes", which follows
    the suites' sections."""
    from bench_lib.suites import SUITES

    computed = [(title, text, view(frame)) for title, view, text in BEFORE_SUITES]
    computed += [section for suite in SUITES.values() for section in suite.report_sections(frame)]
    computed.append((WHERE, where_memory_goes_text(modules), where_memory_goes_view(modules)))
    computed += [(title, text, view(frame)) for title, view, text in AFTER_SUITES]
    return [(title, text, table) for title, text, table in computed if not table.empty]


def run_line(frame: pd.DataFrame) -> str:
    """One line saying where the figures come from: machine, torch, profile, run(s), commit."""
    first = frame.iloc[0]

    def text(column: str) -> str:
        value = first.get(column)
        return "" if value is None or pd.isna(value) else str(value)

    runs = list(dict.fromkeys(frame["run_id"].astype(str)))
    parts = [
        text("gpu_name") or text("cpu_model"),
        f"{text('cpu_count')} CPUs" if text("cpu_count") else "",
        f"torch {text('torch_version')}",
        f"profile {text('profile')}" if text("profile") else "",
        f"run {runs[0]}" if len(runs) == 1 else f"{len(runs)} runs",
        f"commit {text('git_commit')[:12]}" if text("git_commit") else "",
    ]
    return ", ".join(p for p in parts if p)


def render_console(
    frame: pd.DataFrame,
    environment: bool = True,
    modules: pd.DataFrame | None = None,
    headlines_only: bool = False,
) -> str:
    """Findings first (`headlines_only`: the largest batch size and shown optimizer only), then
    every section's table."""
    from bench_lib.analysis import findings

    found = findings.findings(frame)
    text = findings.render_text(found, headlines_only)
    parts = [f"Findings: {findings.FINDINGS_TEXT}", text, ""] if found else []
    for title, text, table in sections(frame, modules):
        if title == "Environment" and not environment:
            continue
        parts += [f"{title}: {text}", table.to_string(index=title != "Noise and failures"), ""]
    return "\n".join(parts).rstrip()


def render_markdown(frame: pd.DataFrame, modules: pd.DataFrame | None = None) -> str:
    """For a pull-request comment: Findings first, then each section with its table folded
    (<details>, which GitHub renders)."""
    from bench_lib.analysis import findings

    parts = ["# bench_lib report", "", run_line(frame), ""]
    found = findings.findings(frame)
    if found:
        parts += ["## Findings", "", findings.FINDINGS_TEXT, "", findings.render_markdown(found)]
    for title, text, table in sections(frame, modules):
        table = table.reset_index() if title != "Noise and failures" else table
        rows = f"{len(table)} row" + ("" if len(table) == 1 else "s")
        parts += [f"## {title}", "", text, "", f"<details><summary>{title}: {rows}</summary>", ""]
        parts += [table.to_markdown(index=False, disable_numparse=True), "", "</details>", ""]
    return "\n".join(parts)


def _finding_html(f: Finding) -> str:
    from bench_lib.analysis.html import esc, mark_no_difference

    items = "".join(f"<li>{mark_no_difference(item)}</li>" for item in f.items)
    return f"<li>{esc(f.topic)}:<ul>{items}</ul></li>"


def _findings_html(frame: pd.DataFrame) -> str:
    from bench_lib.analysis import findings
    from bench_lib.analysis.html import esc

    found = findings.findings(frame)
    if not found:
        return '<p class="note">No ratios to report: no successful inference or fine-tuning case.</p>'
    body = [f'<p class="note">{esc(findings.FINDINGS_TEXT)}</p><div class="findings">']
    for name in dict.fromkeys(f.subject for f in found):
        mine = [f for f in found if f.subject == name]
        items = "".join(_finding_html(f) for f in mine if f.headline)
        rest = "".join(_finding_html(f) for f in mine if not f.headline)
        more = (
            f"<details><summary>other batch sizes and optimizers</summary><ul>{rest}</ul></details>"
            if rest
            else ""
        )
        body.append(f'<div class="subject"><h3>{esc(name)}</h3><ul>{items}</ul>{more}</div>')
    return "".join(body) + "</div>"


BEST = "(best)"  # the key of a model's best fine-tuning cells among its views


def render_html(frame: pd.DataFrame, modules: pd.DataFrame | None = None) -> str:
    """One self-contained page: Findings first, then each section; the model sections (tables
    and figures per model) collapse, and a contents list links them."""
    from bench_lib.analysis import html, plots

    where = where_memory_goes_table(modules)
    figures = {
        "Inference": plots.inference_ratios(frame),
        "Fine-tuning": plots.finetune_ratios(frame),
        WHERE: plots.where_memory_goes(where),
    }
    parts = [html.Section("Findings", _findings_html(frame))]
    per_model: dict[str, dict[str, pd.DataFrame]] = {}  # model -> title -> view of that model alone

    def model_view(model: str, title: str) -> pd.DataFrame:
        # each model's table computed from its rows alone, so its memory unit fits its figures
        if model not in per_model:
            from bench_lib.suites import SUITES

            mine = frame[frame["model"] == model]
            views = {t: v for suite in SUITES.values() for t, _, v in suite.report_sections(mine)}
            if not where.empty and model in where.index.get_level_values("model"):
                views[WHERE] = _where_view(where[where.index.get_level_values("model") == model])
            views[BEST] = finetune_best(mine)
            per_model[model] = views
        return per_model[model].get(title, pd.DataFrame())

    for title, text, view in sections(frame, modules):
        body = f'<p class="note">{html.esc(text)}</p>'
        shown = figures.get(title, {})
        if "model" in (view.index.names or []):
            section = html.Section(title, "")
            for model in dict.fromkeys(view.index.get_level_values("model")):
                inner = "".join(html.figure(png, alt) for (m, alt), png in shown.items() if m == model)
                mine = model_view(model, title)
                marks = model_view(model, BEST) if title == "Fine-tuning" else None
                part, constant = html.split_constant_levels(mine)
                keep = [
                    c for c in part.columns if not part[c].isin(["-", ""]).all()
                ]  # e.g. other models' strategies
                inner += html.table(part[keep], None if marks is None else marks[keep])
                id_ = html.anchor(title, model)
                body += html.collapsible(id_, ", ".join(constant) if constant else model, inner)
                section.children.append((id_, model))
            section.body = body
            parts.append(section)
        else:
            shown_view = view.T.rename_axis("") if title == "Environment" else view  # a field a row
            body += html.table(shown_view, index=title != "Noise and failures")
            parts.append(html.Section(title, body))
    return html.page("bench_lib report", run_line(frame), parts)


def render_summary(frame: pd.DataFrame) -> str:
    """What the console shows at the end of a run (the machine line is printed separately): the
    headline findings, then the tables; `bench_lib report` shows every finding."""
    return render_console(frame, environment=False, headlines_only=True)
