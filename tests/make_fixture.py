"""Writes tests/data/small.csv: a small fixed report for the renderer and compare tests, and its
by-module companion small.modules.csv (whose rows sum to the report's memory figures).

Run `python tests/make_fixture.py` after a schema change, then review and commit the golden files.
"""

from pathlib import Path

from bench_lib.records.schema import SCHEMA_VERSION, modules_frame, to_frame, write_csv_atomic

ENV = {
    "machine_id": "0123456789ab", "hostname": "ci-host", "cpu_model": "Example CPU 9000", "cpu_count": 2,
    "memory_total_bytes": 25 * 2**30, "torch_threads": 1, "gpu_name": None, "gpu_count": 0, "gpu_driver": None,
    "gpu_memory_total_bytes": None, "cuda_version": None, "torch_version": "2.13.0+cpu",
    "python_version": "3.11.7", "platform": "Linux", "git_commit": "abc123", "cpu_malloc": "glibc pinned",
}  # fmt: skip
RUN = {"schema_version": SCHEMA_VERSION, "run_id": "20260101T000000Z_0123456789ab",
       "timestamp_utc": "2026-01-01T00:00:00+00:00", "profile": "default"}  # fmt: skip


def latency(median, iqr=0.01, rounds=500, median_ci=None, processes=1):
    """`median_ci`: the half-width of the median's 95% interval (None: one process, no interval)."""
    interval = {} if median_ci is None else {
        "latency_ms_median_ci_low": median - median_ci, "latency_ms_median_ci_high": median + median_ci,
    }  # fmt: skip
    return interval | {"processes": processes, "stop_reason": "target" if processes > 1 else "fixed"} | {
        "latency_ms_median": median, "latency_ms_mean": median * 1.01, "latency_ms_min": median * 0.95,
        "latency_ms_p90": median * 1.05, "latency_ms_p99": median * 1.2, "latency_ms_iqr": iqr,
        "latency_ms_stddev": iqr, "host_latency_ms_median": median, "rounds": rounds, "iterations": 2,
        "warmup_rounds": 10, "throughput_items_per_s": 32 / (median / 1e3),
    }  # fmt: skip


def ratio_interval(column, ratio, ci):
    """`ci`: (low, high) of the ratio's 95% interval, or None."""
    return {} if ci is None else {f"{column}_ci_low": ci[0], f"{column}_ci_high": ci[1]}


def inference(model, mode, median, peak, saved, ratio, ratio_ci=None, **kw):
    case = {"suite": "inference", "model": model, "device": "cpu", "mode": mode, "batch_size": 32,
            "dtype": "float32", "status": "ok"}  # fmt: skip
    return RUN | case | latency(median, **kw) | ENV | ratio_interval("latency_ratio_to_grad", ratio, ratio_ci) | {
        "latency_ratio_to_grad": ratio, "mem_peak_bytes": peak, "mem_saved_for_backward_bytes": saved,
    }  # fmt: skip


def finetune(strategy, median, ratio, grads, opt, act, frozen, ratio_ci=None, median_ci=None):
    case = {"suite": "finetune", "model": "mlp", "device": "cpu", "batch_size": 32, "dtype": "float32",
            "strategy": strategy, "optimizer": "adamw", "status": "ok"}  # fmt: skip
    processes = 1 if median_ci is None else 4
    return RUN | case | latency(median, median_ci=median_ci, processes=processes) | ENV | ratio_interval(
        "latency_ratio_to_full", ratio, ratio_ci
    ) | {
        "latency_ratio_to_full": ratio, "mem_params_bytes": 2648104, "mem_grads_bytes": grads,
        "mem_optimizer_state_bytes": opt, "mem_activations_bytes": act, "mem_peak_bytes": grads + act,
        "trainable_params": grads // 4, "total_params": 662026, "frozen_blocks": frozen,
    }  # fmt: skip


FAILED = {"suite": "inference", "model": "transformer", "device": "cpu", "mode": "no_grad", "batch_size": 32,
          "dtype": "float32", "status": "failed", "error": "no_grad: output has a grad_fn"}  # fmt: skip
RULER = [
    RUN | {"suite": "ruler", "model": "ruler", "device": "cpu", "mode": name, "batch_size": 1, "dtype": "float32",
           "status": "ok"} | latency(ms) | ENV
    for name, ms in (("matmul", 5.0), ("copy", 2.0), ("tiny_ops", 0.4))
]  # fmt: skip

# A CUDA case as a GPU machine writes it (made-up figures, for the renderer only).
CUDA = RUN | {"suite": "inference", "model": "mlp", "device": "cuda", "mode": "no_grad", "batch_size": 32,
              "dtype": "bfloat16", "status": "ok"} | latency(0.05) | ENV | {
    "host_latency_ms_median": 0.08, "latency_ratio_to_grad": 0.9, "mem_peak_bytes": 99328,
    "mem_saved_for_backward_bytes": 0, "input_bytes": 32768, "h2d_pageable_ms": 0.012, "h2d_pinned_ms": 0.006,
    "cuda_max_allocated_bytes": 3000000, "cuda_max_reserved_bytes": 4194304, "cuda_live_before_bytes": 2900672,
    "cuda_context_bytes": 520093696, "gpu_process_memory_bytes": 526385152, "gpu_util_percent": 35,
    "gpu_sm_clock_mhz_start": 1980, "gpu_sm_clock_mhz_end": 1755, "gpu_mem_clock_mhz": 2619,
    "gpu_temperature_c_start": 38, "gpu_temperature_c_end": 52, "gpu_throttle_start": "gpu_idle",
    "gpu_throttle_end": "sw_power_cap", "gpu_other_processes": 1, "gpu_power_w": 310.5,
    "energy_j_per_item": 310.5 / (32 / 0.05e-3), "energy_method": "counter",  # power / throughput
}  # fmt: skip

# Intervals (schema 5): the mlp ran in 3 worker processes, so its figures have 95% intervals;
# no_grad's ratio interval contains 1.0 (no measurable difference), inference_mode's does not.
# The transformer ran in one process: no interval, so no claim either way.
ROWS = [
    inference("mlp", "grad", 0.5, 262144, 229376, 1.0, median_ci=0.004, processes=3),
    inference("mlp", "no_grad", 0.49, 196608, 0, 0.98, (0.95, 1.01), median_ci=0.006, processes=3),
    inference(
        "mlp", "inference_mode", 0.48, 196608, 0, 0.96, (0.94, 0.98), iqr=0.1, median_ci=0.005, processes=3
    ),
    inference("transformer", "grad", 8.0, 12124160, 10575872, 1.0, rounds=50),
    RUN
    | {
        "suite": "inference",
        "model": "transformer",
        "device": "cpu",
        "mode": "no_grad",
        "batch_size": 32,
        "dtype": "float32",
        "status": "failed",
        "error": "no_grad: output has a grad_fn",
    }
    | ENV,
    finetune("full", 2.9, 1.0, 2648104, 5296240, 230912, 0, median_ci=0.03),
    finetune("frozen_3", 0.95, 0.33, 20520, 41048, 67072, 3, (0.32, 0.34), median_ci=0.01),
    *RULER,
    CUDA,
]


def modules(suite, mode, strategy, rows):
    case = {"run_id": RUN["run_id"], "suite": suite, "model": "mlp", "device": "cpu", "mode": mode,
            "batch_size": 32, "dtype": "float32", "strategy": strategy,
            "optimizer": "adamw" if strategy else "", "compile": ""}  # fmt: skip
    return [
        case | {"module": path, "module_type": kind, "block": block, "mem_saved_for_backward_bytes": saved,
                "mem_peak_bytes": peak}
        for path, kind, block, saved, peak in rows
    ]  # fmt: skip


ACT = 32 * 512 * 4  # one hidden activation of the MLP at batch 32
MODULE_ROWS = [
    *modules("inference", "grad", "", [
        ("trunk_blocks.0.0", "Linear", "trunk_blocks.0", 32 * 256 * 4, 0),
        ("trunk_blocks.0.1", "ReLU", "trunk_blocks.0", ACT, ACT),
        ("trunk_blocks.1.1", "ReLU", "trunk_blocks.1", ACT, ACT),
        ("trunk_blocks.2.0", "Linear", "trunk_blocks.2", 0, ACT),
        ("trunk_blocks.2.1", "ReLU", "trunk_blocks.2", ACT, ACT),
    ]),
    *modules("inference", "no_grad", "", [
        ("trunk_blocks.1.0", "Linear", "trunk_blocks.1", 0, ACT),
        ("trunk_blocks.2.0", "Linear", "trunk_blocks.2", 0, ACT),
        ("trunk_blocks.2.1", "ReLU", "trunk_blocks.2", 0, ACT),
    ]),
    *modules("finetune", "", "full", [
        ("trunk_blocks.0.0", "Linear", "trunk_blocks.0", 32 * 256 * 4, 526336),
        ("trunk_blocks.0.1", "ReLU", "trunk_blocks.0", ACT, 0),
        ("trunk_blocks.1.0", "Linear", "trunk_blocks.1", 0, 1050624),
        ("trunk_blocks.1.1", "ReLU", "trunk_blocks.1", ACT, 0),
        ("trunk_blocks.2.0", "Linear", "trunk_blocks.2", 0, 1050624),
        ("trunk_blocks.2.1", "ReLU", "trunk_blocks.2", ACT, 0),
        ("head", "Linear", "head", 0, 20520),
        ("(loss)", "", "(loss)", 1536, 0),
        ("(optimizer)", "", "(optimizer)", 0, 230912),
    ]),
    *modules("finetune", "", "frozen_3", [
        ("head", "Linear", "head", ACT, 20520),
        ("(loss)", "", "(loss)", 1536, 0),
        ("(optimizer)", "", "(optimizer)", 0, 67072),
    ]),
]  # fmt: skip

if __name__ == "__main__":
    write_csv_atomic(to_frame(ROWS), Path(__file__).parent / "data" / "small.csv")
    write_csv_atomic(modules_frame(MODULE_ROWS), Path(__file__).parent / "data" / "small.modules.csv")
