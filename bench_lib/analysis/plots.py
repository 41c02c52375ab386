"""Figures for the HTML report (matplotlib, Agg), returned as PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from bench_lib.records.cases import MODE_NAMES

MIB = 2**20


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _ok(frame: pd.DataFrame, suite: str) -> pd.DataFrame:
    return frame[(frame["suite"] == suite) & (frame["status"] == "ok")]


def inference_latency(frame: pd.DataFrame) -> dict[str, bytes]:
    """Per model and device: median latency by mode and batch size (grouped bars)."""
    return _per_model_device(frame, "latency_ms_median", "median latency per call (ms)", 1.0)


def inference_memory(frame: pd.DataFrame) -> dict[str, bytes]:
    """Per model and device: the allocator peak of one forward by mode and batch size (MiB)."""
    return _per_model_device(frame, "mem_peak_bytes", "allocator peak of one forward (MiB)", 1 / MIB)


def _per_model_device(frame: pd.DataFrame, column: str, label: str, scale: float) -> dict[str, bytes]:
    ok = _ok(frame, "inference")
    out = {}
    for (model, device, dtype, compiled), group in ok.groupby(
        ["model", "device", "dtype", "compile"], sort=False
    ):
        table = group.pivot_table(index="batch_size", columns="mode", values=column, aggfunc="first")
        table = table[[m for m in MODE_NAMES if m in table.columns]].astype(float) * scale
        fig, ax = plt.subplots(figsize=(5, 3))
        table.plot.bar(ax=ax, rot=0)
        precision = {"float32": "", "tf32": ", tf32"}.get(dtype, f", {dtype} autocast") + (
            ", compiled" if compiled else ""
        )
        ax.set_title(f"{model} on {device}{precision}")
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        out[f"{model} {device} {dtype} {compiled or 'eager'}"] = _png(fig)
    return out


def finetune_memory(frame: pd.DataFrame) -> dict[str, bytes]:
    """Per model, device, batch size and optimizer: memory stacked by category per strategy."""
    ok = _ok(frame, "finetune")
    categories = {
        "mem_params_bytes": "parameters",
        "mem_grads_bytes": "gradients",
        "mem_optimizer_state_bytes": "optimizer state",
        "mem_activations_bytes": "activations",
    }
    out = {}
    for key, group in ok.groupby(["model", "device", "dtype", "batch_size", "optimizer"], sort=False):
        table = group.set_index("strategy")[list(categories)].astype(float).rename(columns=categories) / MIB
        fig, ax = plt.subplots(figsize=(5, 3))
        table.plot.bar(ax=ax, stacked=True, rot=0)
        model, device, dtype, batch, optimizer = key
        precision = "" if dtype == "float32" else f" {dtype}"
        ax.set_title(f"{model} on {device}{precision}, batch {batch}, {optimizer}")
        ax.set_ylabel("MiB")
        out[f"{model} {device} {dtype} b{batch} {optimizer}"] = _png(fig)
    return out


def where_memory_goes(table: pd.DataFrame) -> dict[str, bytes]:
    """Per model, device, dtype and batch size: one bar per case (grad-mode inference's saved
    bytes and peak, no_grad's peak, each fine-tuning strategy's step peak), stacked by block
    (`report.where_memory_goes_table`), in MiB."""
    if table.empty:
        return {}
    out = {}
    blocks = table.xs("block", level="by")
    for (model, device, dtype, batch), group in blocks.groupby(level=[0, 1, 2, 3], sort=False):
        shares = group.droplevel([0, 1, 2, 3])
        shares = shares[shares.index != "(total)"].astype(float).dropna(axis=1, how="all").fillna(0) / MIB
        fig, ax = plt.subplots(figsize=(6, 0.45 * len(shares.columns) + 1.2))
        shares.T.iloc[::-1].plot.barh(ax=ax, stacked=True, width=0.7)
        precision = "" if dtype == "float32" else f" {dtype}"
        ax.set_title(f"where the memory goes: {model} on {device}{precision}, batch {batch}")
        ax.set_xlabel("MiB, by block")
        ax.set_ylabel("")
        ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
        out[f"where {model} {device} {dtype} b{batch}"] = _png(fig)
    return out
