"""`CaseResult`: the frozen outcome of one case, and its flattening into a report row."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from bench_lib.records.cases import Case
from bench_lib.records.stats import Samples, median_estimate, paired_ratio, with_run_spread

K = TypeVar("K")
OK, FAILED, OOM = "ok", "failed", "oom"
STATUSES = (OK, FAILED, OOM)


@dataclass(frozen=True)
class ModuleMemory:
    """Where one case's bytes went: one module (or a labelled part outside the model's modules).

    Parameters
    ----------
    module:
        Dotted path of the module in the model (`encoder.layers.0.self_attn`); `(root)` for the
        model's own forward outside its submodules; `(loss)`, `(optimizer)`, `(autograd)` or
        `(outside modules)` for what ran outside the model's modules.
    module_type:
        The module's class name (`Linear`, `MultiheadAttention`, ...); empty for the labels.
    block:
        The fine-tuning block the module belongs to (its path), else the model's top-level
        child that contains it; the label itself for the labels.
    mem_saved_for_backward_bytes:
        Distinct storages autograd saved for backward while this module was the innermost one
        running (each storage counted once, where it was first saved; parameters excluded).
    mem_peak_bytes:
        Of the bytes live at the case's high-water mark, those this module allocated (in its
        forward, or in the backward of its ops).
    """

    module: str
    module_type: str
    block: str
    mem_saved_for_backward_bytes: int
    mem_peak_bytes: int


@dataclass(frozen=True)
class CaseResult:
    """One case's outcome: raw samples (latency statistics derive from them) and exact metrics.

    `metrics` holds the suite's other columns by their schema names (memory in bytes, ratios);
    `modules` where the case's memory went, module by module (the `*.modules.csv` rows).
    A case that did not succeed has `status` "failed" or "oom" and an `error` message; it may
    still carry the figures measured before it failed, never figures that failed a check.
    """

    case: Case
    status: str = OK
    error: str = ""
    samples: Samples | None = None
    items_per_batch: int = 0
    metrics: Mapping[str, Any] = field(default_factory=dict)
    modules: tuple[ModuleMemory, ...] = ()

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.status != OK and not self.error:
            raise ValueError("a case that did not succeed needs an error message")

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, for passing results from worker processes."""
        return {
            "case": asdict(self.case),
            "status": self.status,
            "error": self.error,
            "samples": asdict(self.samples) if self.samples is not None else None,
            "items_per_batch": self.items_per_batch,
            "metrics": dict(self.metrics),
            "modules": [asdict(m) for m in self.modules],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseResult:
        samples = data.get("samples")
        if samples is not None:
            samples = Samples(
                iterations=samples["iterations"],
                host_ms=tuple(samples["host_ms"]),
                device_ms=tuple(samples["device_ms"]) if samples["device_ms"] is not None else None,
                warmup_rounds=samples["warmup_rounds"],
                process=tuple(samples["process"]),
            )
        return cls(
            case=Case(**data["case"]),
            status=data["status"],
            error=data["error"],
            samples=samples,
            items_per_batch=data["items_per_batch"],
            metrics=data["metrics"],
            modules=tuple(ModuleMemory(**m) for m in data.get("modules", ())),
        )

    def module_rows(self) -> list[dict[str, Any]]:
        """The case's rows of the `*.modules.csv` report: its key, then one module's figures."""
        key = asdict(self.case)
        return [key | asdict(m) for m in self.modules]

    def row(self) -> dict[str, Any]:
        """The case's report columns (identity, status, latency statistics, metrics)."""
        row: dict[str, Any] = {**asdict(self.case), "status": self.status, "error": self.error}
        if self.samples is not None:
            stats = self.samples.stats()
            median = median_estimate(self.samples.by_process())
            row |= {
                "latency_ms_median": stats.median,
                "latency_ms_median_ci_low": median.low,
                "latency_ms_median_ci_high": median.high,
                "processes": median.n,
                "latency_ms_mean": stats.mean,
                "latency_ms_min": stats.min,
                "latency_ms_p90": stats.p90,
                "latency_ms_p99": stats.p99,
                "latency_ms_iqr": stats.iqr,
                "latency_ms_stddev": stats.stddev,
                "host_latency_ms_median": self.samples.host_stats().median,
                "rounds": stats.rounds,
                "iterations": self.samples.iterations,
                "warmup_rounds": self.samples.warmup_rounds,
                "throughput_items_per_s": self.items_per_batch / (stats.median / 1e3)
                if stats.median > 0
                else None,
            }
        row |= dict(self.metrics)
        return row | energy_per_item(row)


def energy_per_item(row: Mapping[str, Any]) -> dict[str, Any]:
    """`energy_j_per_item` as the row's energy phase's mean power / its throughput: the power at
    the timed rounds' pace (their median call, pooled over processes), not the phase's own pace,
    which is one unrepeated stretch of calls the host slows at random (on an H200 a transformer
    call took 2.03 ms in its energy phase where the rounds' median was 1.32 ms). {} without both."""
    power, throughput = row.get("gpu_power_w"), row.get("throughput_items_per_s")
    if power is None or not throughput or power != power or throughput != throughput:  # None, 0, NaN
        return {}
    return {"energy_j_per_item": power / throughput}


def with_ratios(
    results: Mapping[K, CaseResult],
    reference: K | None,
    column: str,
    statistic: Callable[[Sequence[float]], float] = np.median,
    run_sd: float = 0.0,
) -> dict[K, CaseResult]:
    """Add `column`, each result's latency ratio to the `reference` result's, and its 95%
    confidence interval (`<column>_ci_low`, `<column>_ci_high`) to the metrics.

    The ratio is paired: per process, median (or `statistic`) over the reference's from the same
    interleaved rounds, then the mean across processes, with a t-interval from their spread
    (see `stats.paired_ratio`), widened by the spread between runs `run_sd` (see
    `stats.with_run_spread`; 0: the run's own processes only). None when the reference has no
    samples; no interval from one process.
    """
    ref = results.get(reference) if reference is not None else None
    out = {}
    for key, result in results.items():
        ratio = low = high = None
        if result.samples is not None and ref is not None and ref.samples is not None:
            estimate = paired_ratio(result.samples.by_process(), ref.samples.by_process(), statistic)
            estimate = estimate if result is ref else with_run_spread(estimate, run_sd)
            ratio, low, high = estimate.value, estimate.low, estimate.high
        columns = {column: ratio, f"{column}_ci_low": low, f"{column}_ci_high": high}
        out[key] = replace(result, metrics={**result.metrics, **columns}) if result.ok else result
    return out


def failure(case: Case, exc: BaseException, **metrics: Any) -> CaseResult:
    """A result for a case that raised: `oom` for out-of-memory errors, `failed` otherwise."""
    import torch  # the measuring side only: records stay importable without torch

    status = OOM if isinstance(exc, torch.OutOfMemoryError) else FAILED
    return CaseResult(case, status=status, error=describe_error(exc), metrics=metrics)


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """One line: the exception type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
