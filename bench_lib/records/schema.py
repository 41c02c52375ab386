"""The report format: its columns and units, `schema_version`, atomic writes and validated reads.

Format history (bump `SCHEMA_VERSION` and add a migration in `_MIGRATIONS` when it changes):
  1: first version.
  2: adds `inject` (the deliberate regression of a gate audit run; empty otherwise).
  3: adds `compile` (key; empty = eager) and `compile_s`; the GPU-aware columns (CUDA allocator figures, NVML telemetry and energy, input
     transfer) and `input_bytes`; `dtype` now takes bfloat16 / float16 (autocast).
  4: adds the float32 settings each case ran under (`float32_matmul_precision`, `cuda_matmul_tf32`,
     `cudnn_tf32`), `gpu_telemetry_note`, and to the fingerprint `gpu_uuid`, `gpu_mig_mode` and
     `float32_defaults`; `dtype` now takes tf32, and float32 cases run with TF32 off; the GPU
     fingerprint describes the measured device, not NVML's GPU 0; `iterations` is calibrated per
     group unless the profile fixes it; `energy_method` may be `power_average`.
     Also `mem_disagreement` (memory figures that differed between the worker processes of one
     run; empty when they agreed) and `cudnn_version`.
     And `mem_peak_bytes` is the allocator's high-water mark on every device (on the CPU it counted
     tensor storages at op boundaries, missing what kernels allocate inside: a different
     quantity, so version 3 CPU figures are read as empty); the `<stem>.modules.csv` companion.
  5: adds 95% confidence intervals (`latency_ms_median_ci_low/high`, `latency_ratio_to_grad_ci_low/high`,
     `latency_ratio_to_full_ci_low/high`) from the spread between worker processes, the effort
     behind them (`processes`, `stop_reason`), and the LoRA settings of a `lora` fine-tuning case
     (`lora_rank`, `lora_targets`); `strategy` now takes `lora` and `checkpoint`.
  6: adds `ci_run_sd`, the spread between runs the ratio intervals were widened by (a setting:
     `bench_lib precision` can only tell a run's own processes from it when the report says it).
  7: `energy_j_per_item` is `gpu_power_w` / `throughput_items_per_s` (the energy phase's power at
     the timed rounds' pace) rather than the phase's energy / (calls x items); older rows are
     read so, from their own two columns.

A report is a CSV with one row per case, plus a companion `<stem>.samples.csv` holding the raw
per-round latency samples of every case (long format), so statistics can be recomputed and the
regression gate can test significance, and a companion `<stem>.modules.csv` saying where each
case's memory went, module by module (`MODULE_COLUMNS`).
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from bench_lib.errors import UserError
from bench_lib.records.cases import KEY_FIELDS
from bench_lib.records.results import STATUSES

SCHEMA_VERSION = 7


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "str", "int", "float" or "bool"
    unit: str
    description: str


_C = Column
# fmt: off
COLUMNS: tuple[Column, ...] = (
    _C("schema_version", "int", "", "version of this format (see docs/results.md)"),
    _C("run_id", "str", "", "`<UTC timestamp>_<machine_id>` of the run; names the report file"),
    _C("timestamp_utc", "str", "ISO 8601", "when the run started, UTC"),
    _C("profile", "str", "", "profile the run used (tiny, default, full, gpu, hf)"),
    _C("inject", "str", "", "deliberate regression injected to test the gate (`--bench-inject`); empty for a normal run"),
    _C("suite", "str", "", "`inference`, `finetune` or `ruler` (the calibration workloads; `mode` names the workload)"),
    _C("model", "str", "", "model: a zoo name, `bert-base` / `gpt2` (hf extra), or a user model's file or module name (`.FUNCTION` added unless the factory is `make_model`)"),
    _C("device", "str", "", "device kind: `cpu` or `cuda`"),
    _C(
        "mode",
        "str",
        "",
        "grad mode of an inference case: `grad`, `no_grad` or `inference_mode`; empty for finetune",
    ),
    _C("batch_size", "int", "items", "inputs per forward call"),
    _C("dtype", "str", "", "precision: `float32` (IEEE: TF32 off), `tf32` (float32 with TF32 matmuls and convolutions; CUDA, Ampere or newer), or `bfloat16` / `float16` autocast (parameters stay fp32; float16 training uses a GradScaler)"),
    _C(
        "strategy",
        "str",
        "",
        "fine-tuning strategy: `full`, `frozen_<k>`, `frozen_nograd`, `lora` (peft adapters on a frozen base) or `checkpoint` (activation checkpointing of the trunk blocks); empty for inference",
    ),
    _C("optimizer", "str", "", "fine-tuning optimizer: `sgd` (momentum 0.9) or `adamw`; empty for inference"),
    _C("compile", "str", "", "`inductor` for a `torch.compile`d inference case (`--bench-compile=on`); empty: eager"),
    _C("status", "str", "", "`ok`, `failed` (an exception or a failed check) or `oom`"),
    _C("error", "str", "", "why the case did not succeed; empty when ok"),
    _C(
        "latency_ms_median",
        "float",
        "ms",
        "median over rounds of the mean time of one call (a forward; for finetune, a whole training step)",
    ),
    _C("latency_ms_median_ci_low", "float", "ms", "lower end of the 95% confidence interval of latency_ms_median: a t-interval on the logs of the medians of the worker processes (each an independent measurement), centred on the pooled median; empty with one process. Says how far another set of processes at the same moment would put the median, not how far the machine drifts between runs"),
    _C("latency_ms_median_ci_high", "float", "ms", "upper end of that interval"),
    _C("latency_ms_mean", "float", "ms", "mean over rounds"),
    _C("latency_ms_min", "float", "ms", "fastest round"),
    _C("latency_ms_p90", "float", "ms", "90th percentile over rounds (linear interpolation)"),
    _C("latency_ms_p99", "float", "ms", "99th percentile over rounds; needs hundreds of rounds to mean much"),
    _C("latency_ms_iqr", "float", "ms", "interquartile range (p75 - p25) over rounds"),
    _C("latency_ms_stddev", "float", "ms", "sample standard deviation over rounds"),
    _C(
        "host_latency_ms_median",
        "float",
        "ms",
        "median host wall time per call; equals latency_ms_median on the CPU, includes launch and sync on CUDA",
    ),
    _C(
        "latency_ratio_to_grad",
        "float",
        "ratio",
        "median / median of `grad` mode of the same model, device and batch size, measured interleaved in the same process",
    ),
    _C(
        "latency_ratio_to_full",
        "float",
        "ratio",
        "finetune: step time / step time of strategy `full` with the same optimizer, model, device and batch size, measured interleaved: per process the ratio of 20%-trimmed means of the rounds (training steps can run at two speeds from round to round, between which a median of few rounds jumps), geometric mean over processes",
    ),
    _C("latency_ratio_to_grad_ci_low", "float", "ratio", "lower end of the 95% confidence interval of latency_ratio_to_grad: a Student t-interval on the logs of the per-process ratios (the ratio is their geometric mean), widened in quadrature by 1.96 x ci_run_sd (the spread between runs that a run's processes cannot show; by default 0.8% for inference and 1.2% for fine-tuning), so that it says where another run's ratio would fall; empty with one process. An interval containing 1.0 is reported as no measurable difference"),
    _C("latency_ratio_to_grad_ci_high", "float", "ratio", "upper end of that interval"),
    _C("latency_ratio_to_full_ci_low", "float", "ratio", "finetune: lower end of the 95% confidence interval of latency_ratio_to_full (as for latency_ratio_to_grad)"),
    _C("latency_ratio_to_full_ci_high", "float", "ratio", "finetune: upper end of that interval"),
    _C("ci_run_sd", "float", "log sd", "the spread of a ratio between runs that the ratio intervals were widened by (standard deviation of its log: 0.012 = 1.2%; set per suite, `--bench-ci-run-sd inference=0.008,finetune=0.012`, [tool.bench_lib] ci_run_sd); the rest of a half-width is what the run's own processes measured. `bench_lib precision` estimates what it should be on a machine from repeat runs. Empty in reports older than schema 6"),
    _C("processes", "int", "processes", "independent worker processes whose rounds stand behind the latency figures (adaptive effort adds processes until the group's ratio intervals meet the target)"),
    _C("stop_reason", "str", "", "why the group stopped adding processes: `target` (every ratio interval of the group within the precision target), `budget` (its time budget spent), `max_processes`, `no_ratio` (the group has no ratio interval to aim at: its reference alone, or every other variant failed) or `fixed` (the profile or `--bench-processes` fixes the number of processes)"),
    _C("rounds", "int", "", "timed rounds (samples) behind the statistics, all processes together"),
    _C("iterations", "int", "calls", "calls per round, the same for every round and process of a group: calibrated in the group's first process so that a round lasts at least the profile's `min_round_s` (from the model's own calls per round upwards), or fixed by the profile"),
    _C("warmup_rounds", "int", "", "untimed rounds before the timed ones"),
    _C("throughput_items_per_s", "float", "items/s", "batch_size / latency_ms_median"),
    _C(
        "mem_peak_bytes",
        "int",
        "bytes",
        "the allocator's high-water mark during one forward (finetune: one training step) beyond what was live before it, every allocation counted, inside fused kernels too (CPU: c10 allocator; CUDA: caching allocator, 512-byte blocks)",
    ),
    _C(
        "mem_saved_for_backward_bytes",
        "int",
        "bytes",
        "distinct storages autograd saved for backward during one forward, parameters excluded",
    ),
    _C("mem_params_bytes", "int", "bytes", "finetune: all parameters, trainable and frozen"),
    _C("mem_grads_bytes", "int", "bytes", "finetune: the .grad tensors right after backward (= bytes of the trainable parameters)"),
    _C("mem_optimizer_state_bytes", "int", "bytes", "finetune: tensors in the optimizer state after a step (AdamW: exp_avg, exp_avg_sq, a 4-byte step per parameter; SGD: momentum buffers)"),
    _C("mem_activations_bytes", "int", "bytes", "finetune: bytes autograd saved for backward in the step's forward (parameters excluded), all alive at the end of the forward"),
    _C("mem_disagreement", "str", "", "memory figures that differed between the worker processes of this run (`metric: a vs b`); empty when every process measured the same bytes. The gate does not decide memory of such a case"),
    _C("trainable_params", "int", "elements", "finetune: parameters with requires_grad"),
    _C("total_params", "int", "elements", "finetune: all parameters"),
    _C("lora_rank", "int", "", "finetune `lora`: rank r of the LoRA adapters (peft)"),
    _C("lora_targets", "str", "", "finetune `lora`: the modules LoRA adapts (`|`-joined peft target names)"),
    _C("frozen_blocks", "int", "blocks", "finetune: leading trunk blocks frozen (0 for full); frozen blocks run in eval(), so their BatchNorm statistics and dropout are frozen too"),
    _C(
        "rss_peak_delta_bytes",
        "int",
        "bytes",
        "rise of the process's RSS high-water mark during one forward (informational, noisy; empty where not measurable)",
    ),
    _C("compile_s", "float", "s", "compiled cases: wall time of the first call in the case's mode (tracing and compiling; inductor's on-disk cache makes repeat runs faster)"),
    _C("input_bytes", "int", "bytes", "inference: bytes of the forward's input tensors (one batch)"),
    _C("h2d_pageable_ms", "float", "ms", "CUDA inference: median time to copy the inputs to the GPU from pageable host memory (CUDA events)"),
    _C("h2d_pinned_ms", "float", "ms", "CUDA inference: the same from pinned host memory (non_blocking copy)"),
    _C("cuda_max_allocated_bytes", "int", "bytes", "CUDA: torch.cuda.max_memory_allocated() after a reset before the measured forward or step (includes cuda_live_before_bytes)"),
    _C("cuda_max_reserved_bytes", "int", "bytes", "CUDA: torch.cuda.max_memory_reserved() over the same span (the caching allocator's segments)"),
    _C("cuda_live_before_bytes", "int", "bytes", "CUDA: memory_allocated() just before it (model, inputs, optimizer state); mem_peak_bytes = max allocated - this"),
    _C("cuda_context_bytes", "int", "bytes", "CUDA: this worker process's GPU memory (NVML) minus what torch reserved: the CUDA context and libraries"),
    _C("gpu_process_memory_bytes", "int", "bytes", "CUDA: this worker process's GPU memory by NVML at the end of the group"),
    _C("gpu_util_percent", "int", "%", "CUDA: NVML GPU utilization at the end of the group's measurement (sampled over the driver's last period)"),
    _C("gpu_sm_clock_mhz_start", "int", "MHz", "CUDA: SM clock before the group"),
    _C("gpu_sm_clock_mhz_end", "int", "MHz", "CUDA: SM clock after the group"),
    _C("gpu_mem_clock_mhz", "int", "MHz", "CUDA: memory clock after the group"),
    _C("gpu_temperature_c_start", "int", "°C", "CUDA: GPU temperature before the group"),
    _C("gpu_temperature_c_end", "int", "°C", "CUDA: GPU temperature after the group"),
    _C("gpu_throttle_start", "str", "", "CUDA: clock-event (throttle) reasons before the group, `|`-joined (`none`, `gpu_idle`, `sw_power_cap`, `hw_slowdown`, `sw_thermal`, `hw_thermal`, `hw_power_brake`, ...)"),
    _C("gpu_throttle_end", "str", "", "CUDA: clock-event reasons after the group"),
    _C("gpu_other_processes", "int", "processes", "CUDA: other compute processes on the GPU before or after the group; > 0 marks the case as possibly disturbed"),
    _C("gpu_power_w", "float", "W", "CUDA: mean board power during the case's energy phase (energy / time)"),
    _C("energy_j_per_item", "float", "J", "CUDA: GPU energy per item (per sample of a batch) at the timed rounds' pace: gpu_power_w / throughput_items_per_s, i.e. the mean power of an energy phase run after the timing x the median call (latency_ms_median) / items per call (before schema 7: the phase's energy / (calls x items))"),
    _C("energy_method", "str", "", "`counter` (nvmlDeviceGetTotalEnergyConsumption), `power_samples` (instantaneous power integrated every 10 ms, coarser) or `power_average` (the 1-s averaged power at the end of a steady phase one second longer, times its length); empty where NVML offers none"),
    _C("gpu_telemetry_note", "str", "", "CUDA: why NVML telemetry is missing or partial for this case (no NVML; NVML knows no device with this UUID; a MIG instance, which has no power or energy of its own); empty when complete"),
    _C("float32_matmul_precision", "str", "", "torch.get_float32_matmul_precision() the case ran under: `highest` (IEEE float32) or `high` (TF32 on CUDA; tf32 cases)"),
    _C("cuda_matmul_tf32", "bool", "", "torch.backends.cuda.matmul.allow_tf32 the case ran under: whether cuBLAS runs float32 matmuls in TF32 (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 forces it on)"),
    _C("cudnn_tf32", "bool", "", "torch.backends.cudnn.allow_tf32 the case ran under: whether cuDNN runs float32 convolutions in TF32 (torch's default is on; the suite turns it off except for tf32 cases)"),
    _C(
        "machine_id",
        "str",
        "",
        "12-hex-digit hash of the hardware and software fingerprint below (not the hostname)",
    ),
    _C("hostname", "str", "", "host name"),
    _C("cpu_model", "str", "", "CPU model name"),
    _C("cpu_count", "int", "", "logical CPUs"),
    _C("memory_total_bytes", "int", "bytes", "physical memory"),
    _C("torch_threads", "int", "", "torch.get_num_threads() during the run"),
    _C("gpu_name", "str", "", "name (NVML) of the GPU or MIG instance the `cuda` cases ran on, torch's `cuda:0`; empty without CUDA or NVML"),
    _C("gpu_count", "int", "", "CUDA devices torch sees (after CUDA_VISIBLE_DEVICES)"),
    _C("gpu_driver", "str", "", "NVIDIA driver version from NVML"),
    _C("gpu_memory_total_bytes", "int", "bytes", "total memory (NVML) of that GPU or MIG instance"),
    _C("gpu_uuid", "str", "", "NVML UUID of that device: `GPU-...`, or `MIG-...` for a MIG instance"),
    _C("gpu_mig_mode", "str", "", "MIG mode of its physical GPU: `enabled`, `disabled`, or empty where the GPU has no MIG"),
    _C("float32_defaults", "str", "", "torch's float32 settings in this environment before any case changed them (e.g. `matmul highest, cuBLAS TF32 off, cuDNN TF32 on`); part of machine_id where not these stock ones"),
    _C("cuda_version", "str", "", "CUDA version torch was built with (torch.version.cuda)"),
    _C("cudnn_version", "str", "", "cuDNN version torch loads (torch.backends.cudnn.version()); empty without cuDNN"),
    _C("torch_version", "str", "", "torch.__version__"),
    _C("python_version", "str", "", "Python version"),
    _C("platform", "str", "", "platform.platform()"),
    _C("git_commit", "str", "", "commit of the suite's checkout, `-dirty` with local changes"),
    _C("cpu_malloc", "str", "", "malloc settings for the run (see bench_lib/measure/allocator.py)"),
)
# fmt: on
COLUMN_NAMES = tuple(c.name for c in COLUMNS)

# fmt: off
MODULE_COLUMNS: tuple[Column, ...] = (
    _C("module", "str", "", "dotted path of the module in the model (`encoder.layers.0.self_attn`); `(root)`: the model's own forward outside its submodules; outside the model's modules: `(loss)`, `(optimizer)` (the step and zero_grad), `(autograd)` (backward work no forward op explains, e.g. the seed gradient) and `(outside modules)`"),
    _C("module_type", "str", "", "the module's class name (`Linear`, `Conv2d`, `MultiheadAttention`, `LayerNorm`, ...); empty for the labels in parentheses"),
    _C("block", "str", "", "the fine-tuning block containing the module (its path), else the model's top-level child containing it; for the labels, the label"),
    _C("mem_saved_for_backward_bytes", "int", "bytes", "distinct storages autograd saved for backward while this module was the innermost one running (each storage where it was first saved; parameters excluded); sums to the case's mem_saved_for_backward_bytes (finetune: mem_activations_bytes)"),
    _C("mem_peak_bytes", "int", "bytes", "of the bytes live at the case's allocator high-water mark, those this module allocated, in its forward or in the backward of its ops (gradients included); sums to the case's mem_peak_bytes"),
)
# fmt: on
MODULE_FILE_COLUMNS = ("run_id", *KEY_FIELDS, *(c.name for c in MODULE_COLUMNS))
REQUIRED = (
    "schema_version",
    "run_id",
    *(k for k in KEY_FIELDS if k != "compile"),
    "status",
)  # compile: since v3
# Byte counts that are deterministic for fixed shapes (the gate gates them exactly, and the worker
# processes of one run must agree on them). `cuda_max_reserved_bytes` is not: it follows fragmentation.
DETERMINISTIC_MEMORY = (
    "mem_peak_bytes",
    "mem_saved_for_backward_bytes",
    "mem_params_bytes",
    "mem_grads_bytes",
    "mem_optimizer_state_bytes",
    "mem_activations_bytes",
    "cuda_max_allocated_bytes",
)
# The gated byte counts (on CUDA `mem_peak_bytes` is the allocator's peak already), and the
# latency figure the gate and the history follow.
MEMORY_METRICS = tuple(m for m in DETERMINISTIC_MEMORY if m.startswith("mem_"))
LATENCY = "latency_ms_median"
SAMPLE_COLUMNS = ("run_id", *KEY_FIELDS, "process", "round", "latency_ms", "host_latency_ms")

_DTYPES = {"str": "string", "int": "Int64", "float": "Float64", "bool": "boolean"}


# Each migration takes a frame of version v and returns one of version v + 1.
def _v1_to_v2(frame: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    return frame.assign(inject=pd.NA, schema_version="2")


V4_ADDED = ("gpu_telemetry_note", "float32_matmul_precision", "cuda_matmul_tf32", "cudnn_tf32",
            "gpu_uuid", "gpu_mig_mode", "float32_defaults")  # fmt: skip


# The columns version 3 added, by name (never by position: later columns must not enter history).
V3_ADDED = (
    "compile", "compile_s", "input_bytes", "h2d_pageable_ms", "h2d_pinned_ms", "cuda_max_allocated_bytes",
    "cuda_max_reserved_bytes", "cuda_live_before_bytes", "cuda_context_bytes", "gpu_process_memory_bytes",
    "gpu_util_percent", "gpu_sm_clock_mhz_start", "gpu_sm_clock_mhz_end", "gpu_mem_clock_mhz",
    "gpu_temperature_c_start", "gpu_temperature_c_end", "gpu_throttle_start", "gpu_throttle_end",
    "gpu_other_processes", "gpu_power_w", "energy_j_per_item", "energy_method",
)  # fmt: skip


def _v2_to_v3(frame: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    return frame.assign(**{name: pd.NA for name in V3_ADDED if name not in frame}, schema_version="3")


def _v3_to_v4(frame: pd.DataFrame) -> pd.DataFrame:
    """The new columns are unknown for older runs (whose float32 cases ran with torch's settings).
    Version 3 CPU peaks counted tensor storages at op boundaries, not the allocator's high-water
    mark: another quantity, which compare and gate must not set against it."""
    import pandas as pd

    added = (*V4_ADDED, "mem_disagreement", "cudnn_version")
    frame = frame.assign(**{name: pd.NA for name in added if name not in frame}, schema_version="4")
    cpu = frame["device"] == "cpu"
    return frame.assign(mem_peak_bytes=frame["mem_peak_bytes"].mask(cpu))


# The columns version 5 added (unknown for older runs).
V5_ADDED = (
    "latency_ms_median_ci_low", "latency_ms_median_ci_high", "latency_ratio_to_grad_ci_low",
    "latency_ratio_to_grad_ci_high", "latency_ratio_to_full_ci_low", "latency_ratio_to_full_ci_high",
    "processes", "stop_reason", "lora_rank", "lora_targets",
)  # fmt: skip


def _v4_to_v5(frame: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    return frame.assign(**{name: pd.NA for name in V5_ADDED if name not in frame}, schema_version="5")


def _v5_to_v6(frame: pd.DataFrame) -> pd.DataFrame:
    """What a version 5 report's intervals were widened by is unknown (0 before the widening,
    the setting after): empty."""
    import pandas as pd

    return frame.assign(**{"ci_run_sd": pd.NA} if "ci_run_sd" not in frame else {}, schema_version="6")


def _v6_to_v7(frame: pd.DataFrame) -> pd.DataFrame:
    """Energy per item at the timed rounds' pace, from the row's power and throughput (see
    `records.results.energy_per_item`); rows without both keep what they had (nothing)."""
    import pandas as pd

    if not {"gpu_power_w", "throughput_items_per_s", "energy_j_per_item"} <= set(frame.columns):
        return frame.assign(schema_version="7")
    power = pd.to_numeric(frame["gpu_power_w"], errors="coerce")
    throughput = pd.to_numeric(frame["throughput_items_per_s"], errors="coerce")
    both = power.notna() & throughput.gt(0)
    energy = pd.to_numeric(frame["energy_j_per_item"], errors="coerce").where(~both, power / throughput)
    return frame.assign(energy_j_per_item=energy, schema_version="7")


_MIGRATIONS: dict[int, Any] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
    4: _v4_to_v5,
    5: _v5_to_v6,
    6: _v6_to_v7,
}


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows (mappings of column name to value) as a frame with every schema column, typed."""
    import pandas as pd

    rows = list(rows)
    unknown = {k for row in rows for k in row} - set(COLUMN_NAMES)
    if unknown:
        raise ValueError(f"columns not in the schema: {sorted(unknown)}")
    frame = pd.DataFrame(rows, columns=list(COLUMN_NAMES))
    return _typed(frame)


_BOOLS = {"true": True, "false": False, "1": True, "0": False}


def _as_bool(series: pd.Series) -> pd.Series:
    """True/False values, or their text as a CSV holds it, as a nullable boolean column."""
    import pandas as pd

    if isinstance(series.dtype, pd.BooleanDtype):
        return series
    values = series.map(lambda v: None if pd.isna(v) else _BOOLS.get(str(v).strip().lower(), v))
    bad = values.map(lambda v: not pd.isna(v) and not isinstance(v, bool)).to_numpy(dtype=bool)
    if bad.any():
        raise ValueError(f"{series.name}: {series[bad].iloc[0]!r} is not true or false")
    return values.astype("boolean")


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for col in COLUMNS:
        if col.name in frame:
            kind = _DTYPES[col.kind]
            frame[col.name] = (
                _as_bool(frame[col.name]) if col.kind == "bool" else frame[col.name].astype(kind)
            )
    for name in ("mode", "strategy", "optimizer", "compile", "error"):
        if name in frame:
            frame[name] = frame[name].fillna("")
    return frame


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write `frame` to `path` so that a reader (or a crash) never sees a half-written file."""
    write_text_atomic(path, frame.to_csv(index=False))


def check_links(path: Path) -> None:
    """`NotADirectoryError` naming the link when writing `path` would make folders through a
    folder link to nothing (as `mkdir -p` refuses, and `check_writable` for a results folder). A
    link to a file is followed, its folder made if missing (a run's report given as such a link
    keeps its companions beside the target)."""
    for folder in path.parents:
        if folder.is_symlink() and not folder.exists():
            raise NotADirectoryError(errno.ENOTDIR, not_a_folder(folder), str(folder))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (a temporary file in the same folder, then a rename),
    with the permissions a plain `open` would give it (an existing file's own, else the
    umask's). A symbolic link is followed (its target is replaced, the link stays); a target
    that is no regular file (`/dev/null`, a FIFO) is written to as it is; missing folders are
    made, but not through a link to nothing (`NotADirectoryError` naming it, as `check_writable`
    refuses such a folder). An `OSError` names `path` as given, or its folder when the temporary
    file cannot be made there."""
    given = path
    try:
        kind = os.stat(path).st_mode  # through links, as open() sees it
    except OSError:
        kind = None
    if kind is not None and not stat.S_ISREG(kind) and not stat.S_ISDIR(kind):
        try:
            with open(path, "w") as f:  # a device or a pipe (/dev/stdout, >(...)): nothing to replace
                f.write(text)
        except BrokenPipeError:
            if _is_stdout(path):  # `--out /dev/stdout | head`: quiet, as for standard output
                raise
            raise UserError(f"{given}: its reader closed it before the end (Broken pipe)") from None
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(given)) from exc
        return
    check_links(Path(path))
    path = Path(os.path.realpath(path))  # a link's target is replaced, the link stays
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # mkdir met a file where a folder of `path` should be
        raise NotADirectoryError(errno.ENOTDIR, not_a_folder(exc.filename), exc.filename) from exc
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(given)) from exc
    try:
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~UMASK
    except OSError:
        mode = 0o666 & ~UMASK
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot make a temporary file there ({exc.strerror})", str(path.parent)
        ) from exc
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            os.fchmod(f.fileno(), mode)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror, str(given)) from exc
        raise


def _is_stdout(path: Path) -> bool:
    """Whether `path` is this process's standard output (`/dev/stdout`, `/proc/self/fd/1`)."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(1))
    except OSError:
        return False


def not_a_folder(path: str | Path) -> str:
    """Why a folder cannot be made at `path`, which exists: a file, or a link to nothing (a
    dangling link is not a file, and mkdir cannot follow it)."""
    where = Path(path)
    if where.is_symlink() and not where.exists():
        return f"a link to {os.readlink(where)}, which does not exist"
    return "a file, not a folder"


def check_writable(folder: Path) -> None:
    """`UserError` unless files can be written in `folder` (made if missing): asked before a run
    measures anything, so a bad results folder costs one line, not the run."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise UserError(f"cannot write reports in {folder}: {not_a_folder(exc.filename or folder)}") from None
    except OSError as exc:
        where = "" if exc.filename in (None, str(folder)) else f"{exc.filename}: "
        raise UserError(f"cannot write reports in {folder}: {where}{exc.strerror}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".bench_lib-write-check.", dir=folder)  # a name of its own
    except OSError as exc:
        raise UserError(f"cannot write reports in {folder}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: once, at import, and straight back
    os.umask(mask)
    return mask


UMASK = _read_umask()


def samples_path(report: Path) -> Path:
    """The raw-samples companion of a report: `x.csv` -> `x.samples.csv`."""
    return report.with_name(report.stem + ".samples.csv")


def modules_path(report: Path) -> Path:
    """The by-module companion of a report: `x.csv` -> `x.modules.csv`."""
    return report.with_name(report.stem + ".modules.csv")


COMPANION_SUFFIXES = (".samples.csv", ".modules.csv")


def is_companion(path: Path) -> bool:
    """Whether `path` is a report's companion file rather than a report."""
    return path.name.endswith(COMPANION_SUFFIXES)


def modules_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """By-module rows (run id, case key, `MODULE_COLUMNS`) as a typed frame."""
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(MODULE_FILE_COLUMNS))
    kinds = {c.name: c.kind for c in (*COLUMNS, *MODULE_COLUMNS)}
    for name in MODULE_FILE_COLUMNS:
        frame[name] = frame[name].astype(_DTYPES[kinds[name]])
    for name in ("mode", "strategy", "optimizer", "compile"):
        frame[name] = frame[name].fillna("")
    return frame


def read_modules(report: Path | str) -> pd.DataFrame | None:
    """The by-module companion of `report`, typed; None when there is none (reports before
    version 4, or runs that measured no memory). `UserError` when it is not one."""
    import pandas as pd

    path = modules_path(Path(report))
    if not path.is_file():
        return None
    try:

        def identify(frame: pd.DataFrame) -> None:  # before the line-end check
            missing = [c for c in MODULE_FILE_COLUMNS if c not in frame]
            if missing:
                raise UserError(f"{path}: missing columns: {', '.join(missing)}")

        frame = read_csv_strict(path, "modules file", identify=identify).replace("", pd.NA)
        return modules_frame(frame[list(MODULE_FILE_COLUMNS)].to_dict("records"))
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        ValueError,
        TypeError,
    ) as exc:
        raise UserError(
            f"{path}: not a modules file ({str(exc).splitlines()[0] if str(exc) else exc})"
        ) from None


def read_csv_strict(
    path: Path, what: str = "report", identify: Callable[[pd.DataFrame], None] | None = None
) -> pd.DataFrame:
    """A CSV file as text columns, after checking that every record has as many fields as the
    header and that the last line has its line end: pandas fills a short record (a file cut off
    mid-row by a crash or a copy) with empty values, which would read as a case that measured
    nothing. `UserError` when it is not one, naming the file and the line. `identify` raises
    first for a file that is not a `what` at all (which would read as a truncated one). Blank
    lines are skipped, as pandas does."""
    import pandas as pd

    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise UserError(f"{path}: a folder, not a {what}") from None
    if not data.strip():
        raise UserError(f"{path}: empty file, not a {what}")
    if identify is not None:  # by its header, before anything is called damaged
        identify(pd.DataFrame(columns=_header(data)))
    bad = _unequal_record(data)
    whole = _ends_a_line(data)
    del data  # not held while pandas parses the file
    if bad is not None:
        line, fields, header = bad
        raise UserError(
            f"{path}: line {line} has {fields} fields, the header {header}: a truncated or damaged {what}"
        )
    try:
        # from the path (faster than from memory), the bytes checked: no decompression by suffix
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, compression=None)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a CSV {what} (not UTF-8 text)") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: empty file, not a {what}") from None
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: not a CSV {what} ({str(exc).splitlines()[0]})") from None
    if not whole:  # cut inside its last field: the field count cannot see it
        raise UserError(
            f"{path}: the last line has no line end: a truncated {what} "
            "(bench_lib ends every line it writes; if the file is whole, end it with a newline)"
        )
    return frame


def _header(data: bytes) -> list[str]:
    """The column names of the first line that is not blank, as the csv module splits it (from
    the first megabyte; [] when there is none)."""
    import csv

    head = data[: 1 << 20].decode("utf-8-sig", errors="replace")
    try:
        for record in csv.reader(io.StringIO(head, newline="")):
            if "".join(record).strip():
                return record
    except csv.Error:  # a NUL byte: not text, which pandas says
        pass
    return []


def _ends_a_line(data: bytes) -> bool:
    """Whether the last line has its line end (spaces and tabs after it aside). A file cut short
    inside its last field still has as many fields as the header (`0.12` of `0.1234`, or nothing
    after the last comma); only the missing line end tells."""
    end = len(data)
    while end and data[end - 1] in b" \t":
        end -= 1
    return data[end - 1 : end] in (b"\n", b"\r")


def _unequal_record(data: bytes) -> tuple[int, int, int] | None:
    """(line, fields, header fields) of the first record whose number of fields is not the
    header's; None when all agree. Without quotes (samples files, most reports) commas are
    counted per line, vectorized (a 200,000-row samples file in tens of milliseconds); with
    quotes (an error message holding a comma or a line break) or lines ended by a lone carriage
    return the csv module reads it, as pandas would split it."""
    import numpy as np

    if b'"' in data or data.count(b"\r") != data.count(b"\r\n"):  # quotes, or lines ended by a lone CR
        import csv

        try:
            reader = csv.reader(
                io.StringIO(data.decode("utf-8-sig"), newline="")
            )  # lines end at \r, \n, \r\n
            header = next(reader)
            while not "".join(header).strip():  # blank lines before the header
                header = next(reader)
            for record in reader:
                if len(record) != len(header) and "".join(record).strip():
                    return reader.line_num, len(record), len(header)
        except (csv.Error, UnicodeDecodeError, StopIteration):
            return None  # pandas says what it cannot read
        return None
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.append(np.flatnonzero(raw == ord("\n")), len(raw))
    starts = np.concatenate(([0], ends[:-1] + 1))
    commas = np.flatnonzero(raw == ord(","))
    fields = np.searchsorted(commas, ends) - np.searchsorted(commas, starts) + 1
    head = 0
    while head < len(starts) - 1 and not data[starts[head] : ends[head]].strip():
        head += 1  # blank lines before the header, which pandas skips too
    for i in np.flatnonzero(fields != fields[head]):
        if i > head and data[starts[i] : ends[i]].strip():  # a blank or whitespace-only line is skipped
            return int(i) + 1, int(fields[i]), int(fields[head])
    return None


# Key fields every row names (a report's case key, less those empty by design: mode, strategy,
# optimizer, compile), with its run and status.
FILLED = ("run_id", "suite", "model", "device", "batch_size", "dtype", "status")


def first_duplicate(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The rows of the first key in `frame` that has more than one row (empty when none has)."""
    duplicated = frame.duplicated(keys, keep=False)
    if not duplicated.any():
        return frame.iloc[:0]
    first = frame.loc[duplicated, keys].iloc[0].fillna("")
    return frame[frame[keys].fillna("").eq(first).all(axis=1)]


def _check_rows(path: Path, frame: pd.DataFrame) -> None:
    """Every row names its run, case and status, and no case of a run has two rows."""
    for name in (c for c in FILLED if c in frame):
        empty = frame.index[frame[name].isna()]
        if len(empty):
            raise UserError(f"{path}: row {empty[0] + 1} has no {name}")
    twice = first_duplicate(frame, [c for c in ("run_id", *KEY_FIELDS) if c in frame]).index
    if len(twice):
        from bench_lib.records.cases import Case

        row = frame.loc[twice[0]]
        label = Case.from_row({k: row.get(k, "") for k in KEY_FIELDS}).label
        raise UserError(
            f"{path}: case {label} has {len(twice)} rows ({', '.join(f'row {i + 1}' for i in twice[:3])}): "
            "one row per case and run"
        )


def read_report(path: Path | str) -> pd.DataFrame:
    """Read and validate one report; raise `UserError` naming the file and the problem."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a report")
    if not path.is_file():
        raise UserError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")

    def identify(frame: pd.DataFrame) -> None:
        if "schema_version" not in frame:
            raise UserError(f"{path}: no schema_version column: not a bench_lib report")

    frame = read_csv_strict(path, identify=identify)
    if frame.empty:
        raise UserError(f"{path}: a header and no rows: an empty report")
    versions = pd.to_numeric(frame["schema_version"], errors="coerce")
    if versions.isna().any():
        raise UserError(f"{path}: schema_version missing or not a number")
    version = int(versions.max())
    if version > SCHEMA_VERSION:
        raise UserError(
            f"{path}: schema_version {version} is newer than this bench_lib reads ({SCHEMA_VERSION}); upgrade bench_lib"
        )
    if version < 1 or (versions != version).any():
        raise UserError(
            f"{path}: unknown schema_version {int(versions.min())} (this bench_lib reads 1 to {SCHEMA_VERSION})"
        )
    missing = [c for c in REQUIRED if c not in frame]
    if missing:
        raise UserError(f"{path}: missing required columns: {', '.join(missing)}")
    numeric = [c.name for c in COLUMNS if c.kind in ("int", "float") and c.name in frame]
    bad = [c for c in numeric if frame[c].str.strip().str.lower().isin(["nan", "inf", "-inf", "+inf"]).any()]
    if bad:
        raise UserError(f"{path}: NaN or infinite values in {', '.join(bad)}")
    frame = frame.replace("", pd.NA)
    for v in range(version, SCHEMA_VERSION):
        frame = _MIGRATIONS[v](frame)
    frame = frame[[c for c in COLUMN_NAMES if c in frame] + [c for c in frame if c not in COLUMN_NAMES]]
    try:
        frame = _typed(frame)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: a column has values of the wrong type ({exc})") from None
    _check_rows(path, frame)
    bad_status = set(frame["status"].dropna()) - set(STATUSES)
    if bad_status:
        raise UserError(f"{path}: unknown status values: {', '.join(sorted(bad_status))}")
    negative = [c for c in numeric if (frame[c].dropna() < 0).any()]
    if negative:
        raise UserError(f"{path}: negative values in {', '.join(negative)}")
    return frame


def markdown_table(columns: Iterable[Column] = COLUMNS) -> str:
    """A column reference of docs/results.md, generated from `columns`."""
    lines = ["| column | type | unit | meaning |", "|---|---|---|---|"]
    lines += [f"| `{c.name}` | {c.kind} | {c.unit} | {c.description} |" for c in columns]
    return "\n".join(lines)


DOC_START, DOC_END = "<!-- columns:start", "<!-- columns:end -->"
MODULES_DOC_START, MODULES_DOC_END = "<!-- module-columns:start", "<!-- module-columns:end -->"


def documented(text: str) -> str:
    """`text` (docs/results.md) with its column tables regenerated from `COLUMNS` and
    `MODULE_COLUMNS`."""
    for (begin, finish), columns in (
        ((DOC_START, DOC_END), COLUMNS),
        ((MODULES_DOC_START, MODULES_DOC_END), MODULE_COLUMNS),
    ):
        start, end = text.index(begin), text.index(finish)
        first_line_end = text.index("\n", start) + 1
        text = text[:first_line_end] + markdown_table(columns) + "\n" + text[end:]
    return text


def write_docs(path: str | Path) -> None:
    """Regenerate the column table of docs/results.md in place (`make docs`)."""
    doc = Path(path)
    doc.write_text(documented(doc.read_text()))
