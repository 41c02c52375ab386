"""Summary tables computed from a report frame first, then rendered as text."""

from __future__ import annotations

import base64
import html
import math

import pandas as pd

from bench_lib.measure.telemetry import SLOWDOWNS
from bench_lib.records.cases import MODE_NAMES, REFERENCE_MODE, Case
from bench_lib.records.stats import MIN_ROUNDS_FOR_P99, NOISY_IQR_FRACTION


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
    return f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def inference_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per model, device and batch size; per mode the median latency (ms), the ratio to
    grad, the allocator peak and the bytes saved for backward. Values stay numeric."""
    ok = frame[(frame["suite"] == "inference") & (frame["status"] == "ok")].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["compile"] = ok["compile"].replace("", "eager")
    values = ["latency_ms_median", "latency_ratio_to_grad", "mem_peak_bytes", "mem_saved_for_backward_bytes"]
    table = ok.pivot_table(
        index=["model", "device", "dtype", "compile", "batch_size"],
        columns="mode",
        values=values,
        aggfunc="first",
        dropna=False,
    )
    modes = [m for m in MODE_NAMES if m in ok["mode"].unique()]
    table = table.reindex(columns=pd.MultiIndex.from_product([values, modes]))
    return table.dropna(how="all")  # dropna=False above also made index combinations never measured


def inference_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The inference table, formatted for people (strings)."""
    table = inference_table(frame)
    if table.empty:
        return table
    modes = list(table.columns.get_level_values(1).unique())
    out = pd.DataFrame(index=table.index)
    for mode in modes:
        label = "inference" if mode == "inference_mode" else mode
        out[f"{label} ms"] = table[("latency_ms_median", mode)].map(format_ms)
        if mode != REFERENCE_MODE:
            out[f"{label} x"] = table[("latency_ratio_to_grad", mode)].map(_ratio)
    for mode in modes:
        label = "inference" if mode == "inference_mode" else mode
        out[f"{label} peak"] = table[("mem_peak_bytes", mode)].map(format_bytes)
    if REFERENCE_MODE in modes:
        out["grad saved"] = table[("mem_saved_for_backward_bytes", REFERENCE_MODE)].map(format_bytes)
    out.index = out.index.set_names(["model", "device", "dtype", "compile", "batch"])
    return out


def _ratio(r: float | None) -> str:
    return "-" if r is None or pd.isna(r) else f"{r:.3f}"


FINETUNE_MEMORY = [
    "mem_params_bytes",
    "mem_grads_bytes",
    "mem_optimizer_state_bytes",
    "mem_activations_bytes",
]


def finetune_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per model, device, batch size, optimizer and strategy: step time, its ratio to
    `full`, each memory category, their total and its saving against `full` (bytes)."""
    ok = frame[(frame["suite"] == "finetune") & (frame["status"] == "ok")].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["mem_total_bytes"] = ok[FINETUNE_MEMORY].sum(axis=1)
    key = ["model", "device", "dtype", "batch_size", "optimizer"]
    full = ok[ok["strategy"] == "full"].set_index(key)["mem_total_bytes"].rename("full_total")
    ok = ok.join(full, on=key)
    ok["mem_saving_bytes"] = ok["full_total"] - ok["mem_total_bytes"]
    cols = [
        "latency_ms_median",
        "latency_ratio_to_full",
        *FINETUNE_MEMORY,
        "mem_peak_bytes",
        "mem_total_bytes",
        "mem_saving_bytes",
    ]
    return ok.set_index([*key, "strategy"])[cols]


def finetune_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The fine-tuning table, formatted for people (strings)."""
    table = finetune_table(frame)
    if table.empty:
        return table
    out = pd.DataFrame(index=table.index)
    out["step ms"] = table["latency_ms_median"].map(format_ms)
    out["x full"] = table["latency_ratio_to_full"].map(_ratio)
    labels = {"mem_params_bytes": "params", "mem_grads_bytes": "grads", "mem_optimizer_state_bytes": "opt state",
              "mem_activations_bytes": "activations", "mem_peak_bytes": "step peak", "mem_total_bytes": "total",
              "mem_saving_bytes": "saved vs full"}  # fmt: skip
    for col, label in labels.items():
        out[label] = table[col].map(format_bytes)
    out.index = out.index.set_names(["model", "device", "dtype", "batch", "optimizer", "strategy"])
    return out


WHERE_KEY = ["model", "device", "dtype", "batch_size"]
WHERE_TOTAL = "(total)"


def _shown_optimizer(finetune: pd.DataFrame) -> str | None:
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
    optimizer = _shown_optimizer(finetune)
    parts = [
        (inference[inference["mode"] == "grad"], "mem_saved_for_backward_bytes", "grad saved"),
        (inference[inference["mode"] == "grad"], "mem_peak_bytes", "grad peak"),
        (inference[inference["mode"] == "no_grad"], "mem_peak_bytes", "no_grad peak"),
    ]
    finetune = finetune[finetune["optimizer"] == optimizer]
    parts += [
        (finetune[finetune["strategy"] == s], "mem_peak_bytes", f"{s} peak")
        for s in sorted(set(finetune["strategy"]), key=_strategy_order)
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


def _strategy_order(strategy: str) -> tuple[int, int, str]:
    """full, checkpoint, then frozen_<k> by k (each before its frozen_<k>+checkpoint), then the
    rest (frozen_nograd, lora)."""
    if strategy in ("full", "checkpoint"):
        return (0, strategy != "full", strategy)
    k = strategy.removeprefix("frozen_").partition("+")[0]
    return (1, int(k), strategy) if k.isdigit() else (2, 0, strategy)


def where_memory_goes_view(modules: pd.DataFrame | None) -> pd.DataFrame:
    """ "Where the memory goes", formatted for people (strings)."""
    table = where_memory_goes_table(modules)
    if table.empty:
        return table
    out = table.map(format_bytes)
    out.index = out.index.set_names(["model", "device", "dtype", "batch", "by", "name"])
    return out


def where_memory_goes_text(modules: pd.DataFrame | None) -> str:
    optimizer = _shown_optimizer(modules[modules["suite"] == "finetune"]) if modules is not None else None
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


def render_console(frame: pd.DataFrame, environment: bool = True, modules: pd.DataFrame | None = None) -> str:
    parts = []
    for title, text, table in sections(frame, modules):
        if title == "Environment" and not environment:
            continue
        parts += [f"{title}: {text}", table.to_string(index=title != "Noise and failures"), ""]
    return "\n".join(parts).rstrip()


def render_markdown(frame: pd.DataFrame, modules: pd.DataFrame | None = None) -> str:
    parts = ["# bench_lib report", ""]
    for title, text, table in sections(frame, modules):
        table = table.reset_index() if title != "Noise and failures" else table
        parts += [f"## {title}", "", text, "", table.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(parts)


def render_html(frame: pd.DataFrame, modules: pd.DataFrame | None = None) -> str:
    """One self-contained HTML page: the sections' tables and the plots as embedded PNGs."""
    from bench_lib.analysis import plots

    figures = {
        "Inference": [*plots.inference_latency(frame).items(), *plots.inference_memory(frame).items()],
        "Fine-tuning": list(plots.finetune_memory(frame).items()),
        WHERE: list(plots.where_memory_goes(where_memory_goes_table(modules)).items()),
    }
    body = ["<h1>bench_lib report</h1>"]
    for title, text, table in sections(frame, modules):
        body += [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(text)}</p>", table.to_html(border=0)]
        for name, png in figures.get(title, []):
            data = base64.b64encode(png).decode()
            body.append(
                f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></figure>'
            )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{padding:2px 8px;text-align:right}figure{display:inline-block;margin:4px}"
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>bench_lib report</title>'
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def render_summary(frame: pd.DataFrame) -> str:
    """What the console shows at the end of a run (the machine line is printed separately)."""
    return render_console(frame, environment=False)
