"""Summary tables computed from a report frame first, then rendered as text."""

from __future__ import annotations

import math

import pandas as pd

from bench_lib.modes import MODES, REFERENCE_MODE

GROUP = ["model", "device", "batch_size"]


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
    grad, the peak tensor memory and the bytes saved for backward. Values stay numeric."""
    ok = frame[(frame["suite"] == "inference") & (frame["status"] == "ok")]
    if ok.empty:
        return pd.DataFrame()
    values = ["latency_ms_median", "latency_ratio_to_grad", "mem_peak_bytes", "mem_saved_for_backward_bytes"]
    table = ok.pivot_table(index=GROUP, columns="mode", values=values, aggfunc="first", dropna=False)
    modes = [m for m in MODES if m in ok["mode"].unique()]
    return table.reindex(columns=pd.MultiIndex.from_product([values, modes]))


def render_inference(frame: pd.DataFrame) -> str:
    """The console summary of the inference suite."""
    table = inference_table(frame)
    if table.empty:
        return "No successful inference case to summarize."
    modes = list(table.columns.get_level_values(1).unique())
    out = pd.DataFrame(index=table.index)
    for mode in modes:
        label = "inference" if mode == "inference_mode" else mode
        out[f"{label} ms"] = table[("latency_ms_median", mode)].map(format_ms)
        if mode != REFERENCE_MODE:
            out[f"{label} x"] = table[("latency_ratio_to_grad", mode)].map(
                lambda r: "-" if pd.isna(r) else f"{r:.3f}"
            )
    for mode in modes:
        label = "inference" if mode == "inference_mode" else mode
        out[f"{label} peak"] = table[("mem_peak_bytes", mode)].map(format_bytes)
    if REFERENCE_MODE in modes:
        out["grad saved"] = table[("mem_saved_for_backward_bytes", REFERENCE_MODE)].map(format_bytes)
    out.index = out.index.set_names(["model", "device", "batch"])
    return out.to_string()


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
    key = ["model", "device", "batch_size", "optimizer"]
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


def render_finetune(frame: pd.DataFrame) -> str:
    table = finetune_table(frame)
    if table.empty:
        return ""
    out = pd.DataFrame(index=table.index)
    out["step ms"] = table["latency_ms_median"].map(format_ms)
    out["x full"] = table["latency_ratio_to_full"].map(lambda r: "-" if pd.isna(r) else f"{r:.3f}")
    labels = {"mem_params_bytes": "params", "mem_grads_bytes": "grads", "mem_optimizer_state_bytes": "optimizer",
              "mem_activations_bytes": "activations", "mem_peak_bytes": "step peak", "mem_total_bytes": "total",
              "mem_saving_bytes": "saved vs full"}  # fmt: skip
    for col, label in labels.items():
        out[label] = table[col].map(format_bytes)
    out.index = out.index.set_names(["model", "device", "batch", "optimizer", "strategy"])
    return out.to_string()


def render_problems(frame: pd.DataFrame) -> str:
    """Cases that did not succeed, and successful ones whose spread makes them untrustworthy."""
    lines = []
    bad = frame[frame["status"] != "ok"]
    for _, row in bad.iterrows():
        lines.append(f"  {row['status'].upper():6s} {_case_label(row)}: {row['error']}")
    ok = frame[frame["status"] == "ok"]
    noisy = ok[(ok["latency_ms_iqr"] / ok["latency_ms_median"]) > 0.10]
    for _, row in noisy.iterrows():
        spread = row["latency_ms_iqr"] / row["latency_ms_median"]
        lines.append(f"  NOISY  {_case_label(row)}: IQR is {spread:.0%} of the median")
    return "\n".join(lines)


def _case_label(row: pd.Series) -> str:
    parts = [row["suite"], row["model"], row["device"], f"b{row['batch_size']}"]
    parts += [row[k] for k in ("optimizer", "strategy", "mode") if isinstance(row[k], str) and row[k]]
    return " ".join(str(p) for p in parts)


def render_summary(frame: pd.DataFrame) -> str:
    """Everything the console shows at the end of a run."""
    header = (
        "Inference: median latency per call (ms), ratio to grad (x, measured interleaved), "
        "peak tensor memory of one forward, bytes saved for backward under grad"
    )
    parts = [header, render_inference(frame)]
    finetune = render_finetune(frame)
    if finetune:
        parts += [
            "",
            "Fine-tuning: median time of one training step (ms), ratio to full (x, interleaved), memory by "
            "category; total = params + grads + optimizer + activations",
            finetune,
        ]
    problems = render_problems(frame)
    if problems:
        parts += ["", "Cases to look at:", problems]
    return "\n".join(parts)
