"""Raw latency samples (`Samples`) and their summary statistics, computed from the samples and
never stored alone. Pure Python and numpy: the analysis side reads these without torch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# torch.utils.benchmark warns when IQR / median exceeds 10%: the same threshold marks noise here.
NOISY_IQR_FRACTION = 0.10
# Fewer rounds than this make a p99 little more than the maximum.
MIN_ROUNDS_FOR_P99 = 100


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of per-call latencies in milliseconds (each sample is one round's mean call).

    Percentiles use linear interpolation between order statistics (numpy's default); `stddev` is
    the sample standard deviation (ddof=1; 0 for a single sample); `iqr` is p75 - p25.
    """

    median: float
    mean: float
    min: float
    max: float
    p90: float
    p99: float
    iqr: float
    stddev: float
    rounds: int

    @property
    def noisy(self) -> bool:
        """True when the spread (IQR) exceeds 10% of the median: the figure is not trustworthy."""
        return self.median > 0 and self.iqr / self.median > NOISY_IQR_FRACTION


def summarize(samples_ms: Sequence[float]) -> LatencyStats:
    """Statistics of a non-empty sequence of positive latencies in milliseconds."""
    values = np.asarray(samples_ms, dtype=float)
    if values.size == 0:
        raise ValueError("no samples to summarize")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("latency samples must be finite and non-negative")
    p25, p50, p75, p90, p99 = np.percentile(values, [25, 50, 75, 90, 99])
    return LatencyStats(
        median=float(p50),
        mean=float(values.mean()),
        min=float(values.min()),
        max=float(values.max()),
        p90=float(p90),
        p99=float(p99),
        iqr=float(p75 - p25),
        stddev=float(values.std(ddof=1)) if values.size > 1 else 0.0,
        rounds=int(values.size),
    )


CONFIDENCE = 0.95  # of every interval in a report
Z_CONFIDENCE = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)  # 1.959964: the normal quantile of it


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% confidence interval (`low`, `high` are None without one: a single
    process gives no spread to estimate it from) and the number of processes behind it."""

    value: float
    low: float | None = None
    high: float | None = None
    n: int = 1

    @property
    def half_width(self) -> float | None:
        """Half the interval's length (the interval is symmetric on a log scale, so the figure
        sits a little below its middle)."""
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    @property
    def relative_half_width(self) -> float | None:
        """Half-width over the figure: 0.01 means +-1%."""
        h = self.half_width
        return None if h is None or self.value == 0 else h / abs(self.value)


def t_half_width(values: Sequence[float], confidence: float = CONFIDENCE) -> float | None:
    """Half-width of the Student t confidence interval of the mean of `values` (None for fewer
    than two): t(n-1) * s / sqrt(n).

    Why t on per-process values and not a bootstrap: the values are a handful (3 to 15
    independent worker processes), each already an average over many rounds and so close to
    normal; a percentile bootstrap of so few values is too narrow (it resamples the sample's own
    spread and uses normal, not t, quantiles), which repeat runs showed as under-coverage.
    """
    n = len(values)
    if n < 2:
        return None
    from scipy import stats as sps  # imported on first use: the records stay light to import

    s = float(np.std(values, ddof=1))
    return float(sps.t.ppf(0.5 + confidence / 2, n - 1) * s / np.sqrt(n))


def trimmed_mean(values: Sequence[float], cut: float = 0.2) -> float:
    """The mean after dropping `int(cut * n)` values from each end (scipy's `trim_mean`)."""
    data = np.sort(np.asarray(values, dtype=float))  # numpy only: gpu-check runs without scipy
    k = int(cut * len(data))
    return float(np.mean(data[k : len(data) - k]))


def paired_ratio(
    samples_by_process: Mapping[int, Sequence[float]],
    reference_by_process: Mapping[int, Sequence[float]],
    statistic: Callable[[Sequence[float]], float] = np.median,
) -> Estimate:
    """Geometric mean over processes of each process's ratio of medians (sample / reference; see
    `statistic`), with its 95% t-interval (see `t_half_width`), computed on the logs of the ratios.

    `statistic` summarises each process's rounds of one side (the median by default; the
    fine-tuning suite uses `trimmed_mean`: its training steps run at two speeds from round to
    round on some machines, and a median of 5-10 rounds jumps between them where a trimmed mean
    averages them; over ten default runs here that made the spread between processes 15-20%
    smaller with the same coverage).

    Each process measured both sides interleaved, so each ratio is free of the drift between
    processes; the medians resist outlying rounds within a process, and the mean across
    processes averages the process-to-process variation (more efficiently than a median of
    a handful of values). The processes are independent measurements, so their spread says how
    precise the mean is. On logs because a ratio is multiplicative: the interval stays positive
    and symmetric in "x times faster or slower" (with 2 processes a linear t-interval of 0.5
    +- 0.6 would reach below zero); for ratios a few percent apart the geometric and the
    arithmetic mean differ by a fraction of their interval.
    """
    common = sorted(set(samples_by_process) & set(reference_by_process))
    if not common:
        raise ValueError("no process measured both sides")
    ratios = [ratio_of(samples_by_process[p], reference_by_process[p], statistic) for p in common]
    if min(ratios) <= 0:  # a zero median: no geometric mean, no interval
        return Estimate(float(np.mean(ratios)), n=len(ratios))
    logs = [float(x) for x in np.log(ratios)]
    return _estimate(float(np.exp(np.mean(logs))), logs)


def with_run_spread(estimate: Estimate, run_sd: float) -> Estimate:
    """`estimate` with its interval widened for the spread between runs: half-width on the log
    scale sqrt(h^2 + (z * run_sd)^2), z the normal quantile of the confidence (1.96), `run_sd`
    the standard deviation of a ratio's log from one run to the next beyond what the run's own
    processes show (`ci_run_sd`; what `bench_lib precision` estimates from repeat runs).

    Why: the processes of one run span seconds, and the machine's state moves the ratios of a
    whole run together from one run to the next minutes apart (one run's inference ratios all
    1.7% below the others'; spread beyond the processes' intervals 0-1.14% in three sets of five
    runs here); no number of processes inside a run can see that, so intervals of the processes
    alone covered another run's estimate in 60.6-91% of pairs, not 95%. Unchanged without an
    interval (one process) or with `run_sd` 0."""
    if estimate.low is None or estimate.high is None or run_sd <= 0 or estimate.value <= 0:
        return estimate
    h = float(np.log(estimate.high / estimate.value))
    total = float(np.hypot(h, Z_CONFIDENCE * run_sd))
    value = estimate.value
    return Estimate(value, value * float(np.exp(-total)), value * float(np.exp(total)), estimate.n)


def median_estimate(samples_by_process: Mapping[int, Sequence[float]]) -> Estimate:
    """The median of every process's rounds pooled, with a 95% interval from the spread of the
    per-process medians: a t-interval on their logs around their geometric mean, widened where
    needed to contain the pooled median too (processes after a slow group's first time fewer
    rounds, so the pooled median leans a little towards the first): how far another set of
    processes at the same moment would put the median. It cannot say how much the machine itself drifts between runs minutes
    apart, which moves absolute figures more than any interval here (see README, "How precise
    are the figures")."""
    pooled = float(np.median([v for values in samples_by_process.values() for v in values]))
    if pooled <= 0:
        return Estimate(pooled, n=len(samples_by_process))
    medians = [float(np.median(v)) for v in samples_by_process.values()]
    if min(medians) <= 0:
        return Estimate(pooled, n=len(medians))
    logs = [float(x) for x in np.log(medians)]
    around = _estimate(float(np.exp(np.mean(logs))), logs)
    if around.low is None or around.high is None:
        return Estimate(pooled, n=len(medians))
    return Estimate(pooled, min(around.low, pooled), max(around.high, pooled), len(medians))


def ratio_of(
    samples_ms: Sequence[float],
    reference_ms: Sequence[float],
    statistic: Callable[[Sequence[float]], float] = np.median,
) -> float:
    """statistic(samples) / statistic(reference), the median by default: the drift-robust
    comparison when both sides were measured interleaved, round by round, in the same process."""
    reference = float(statistic(reference_ms))
    if reference <= 0:
        raise ValueError("the reference's median (statistic) must be positive")
    return float(statistic(samples_ms)) / reference


def _estimate(value: float, logs: Sequence[float]) -> Estimate:
    """`value` with the interval value x exp(+-h), h the t half-width of `logs`."""
    h = t_half_width(logs)
    if h is None:
        return Estimate(value, n=len(logs))
    return Estimate(value, value * float(np.exp(-h)), value * float(np.exp(h)), len(logs))


@dataclass(frozen=True)
class Samples:
    """Raw timings of one variant: one sample per round, each the mean time of one call in ms.

    `device_ms` holds CUDA-event times (None on the CPU); `host_ms` host wall times.
    `process` gives, per round, the index of the worker process that measured it (all 0 for
    samples from one process); `warmup_rounds` is per process.
    """

    iterations: int
    host_ms: tuple[float, ...]
    device_ms: tuple[float, ...] | None = None
    warmup_rounds: int = 0
    process: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if not self.host_ms:
            raise ValueError("no rounds recorded")
        if self.device_ms is not None and len(self.device_ms) != len(self.host_ms):
            raise ValueError("host and device samples differ in length")
        if not self.process:
            object.__setattr__(self, "process", (0,) * len(self.host_ms))
        if len(self.process) != len(self.host_ms):
            raise ValueError("process indices and samples differ in length")

    @classmethod
    def pooled(cls, parts: Sequence[Samples]) -> Samples:
        """The samples of several processes as one, each round tagged with its part's index."""
        if not parts or len({p.iterations for p in parts}) != 1:
            raise ValueError("need samples with the same iterations per round")
        device_parts = [p.device_ms for p in parts if p.device_ms is not None]
        device = sum(device_parts, ()) if len(device_parts) == len(parts) else None
        return cls(
            iterations=parts[0].iterations,
            host_ms=sum((p.host_ms for p in parts), ()),
            device_ms=device,
            warmup_rounds=parts[0].warmup_rounds,
            process=sum(((i,) * p.rounds for i, p in enumerate(parts)), ()),
        )

    def by_process(self) -> dict[int, tuple[float, ...]]:
        """The primary samples of each process."""
        out: dict[int, list[float]] = {}
        for proc, value in zip(self.process, self.primary_ms, strict=True):
            out.setdefault(proc, []).append(value)
        return {k: tuple(v) for k, v in out.items()}

    @property
    def primary_ms(self) -> tuple[float, ...]:
        """Device time where measured (CUDA events), host time otherwise."""
        return self.device_ms if self.device_ms is not None else self.host_ms

    @property
    def rounds(self) -> int:
        return len(self.host_ms)

    def stats(self) -> LatencyStats:
        return summarize(self.primary_ms)

    def host_stats(self) -> LatencyStats:
        return summarize(self.host_ms)
