"""Change points: the commit where a figure of one case, on one machine fingerprint, stepped.

A series is one figure of one case on one fingerprint (machine, threads, malloc settings) over
the commits of one branch, oldest first; each commit's value is the median over its runs (memory:
the most common value). Runs with local changes (`-dirty`) or an injected regression are left
out: they are no commit's figure.

- Memory figures are exact byte counts: every commit whose value differs from the previous
  commit's is a step, of exactly that many bytes.
- Latency is noisy, and on a shared machine the noise only ever adds time: another tenant slows
  some rounds, never speeds one up. So latency steps are looked for in each run's fastest round
  (`latency_ms_min`), which load moves far less than the median (measured on this project's
  2-core machine: medians of unchanged runs moved 0.35x-3.5x of their median while the fastest
  rounds of the MLP stayed within 0.94x-1.25x; the minimum is the estimator of choice for
  positive-only noise, as in Julia's BenchmarkTools). The median is shown beside it, and
  `--metric latency_ms_median` detects on it instead. The log of the series is segmented by
  binary segmentation (L1 cost, so that a few disturbed runs do not move a level;
  `segment.binseg_l1`, ruptures' `Binseg` by test) with a penalty of `penalty` x the series'
  own noise x log(n), each segment at least
  `min_size` commits long; the tests below decide which boundaries are steps. A segment
  shorter than `persist` commits whose neighbours agree within `min_change` is an excursion (a
  burst of load on the machine), not two steps, and is merged away. A step is then reported
  only when the levels on either side (medians of the neighbouring segments) differ by at least
  `min_change` and a two-sided Mann-Whitney U test between those segments gives p < `alpha`;
  `1 - p` is its confidence. The step's commit is the first of the new level; the range to
  bisect is from the last commit of the old level to it.
- A load on the machine that lasts for several runs still moves most cases at once. A latency
  step at a commit where at least `machine_wide` of the fingerprint's latency series (4 or more)
  moved the same way (by half of `min_change` and beyond their own noise, whether or not each
  is a step of its own) is marked machine-wide: the machine moved, or a change slowed
  everything. Such steps are listed apart, not as regressions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np

from bench_lib.errors import UserError
from bench_lib.history.segment import binseg_l1, mann_whitney_p
from bench_lib.records.schema import LATENCY, MEMORY_METRICS

FASTEST = "latency_ms_min"
_SE_MOVED = 2.0  # standard errors beyond which a series counts as moved (machine-wide check)
DEFAULT_METRICS = (LATENCY, FASTEST, *MEMORY_METRICS)  # shown
STEP_METRICS = (FASTEST, *MEMORY_METRICS)  # searched for steps


@dataclass(frozen=True)
class StepRules:
    """What counts as a latency step (memory steps are exact, whatever their size)."""

    # relative size of a step: 3/4 of the gate's 10% threshold, above the +6-8% that a load
    # of an hour moved the fastest rounds of unchanged runs on this project's 2-core machine
    min_change: float = 0.075
    alpha: float = 0.001  # Mann-Whitney U, two-sided, between the segments either side
    min_size: int = 4  # commits in a segment: a step is reported once this many commits show it
    persist: int = 8  # shorter excursions that return to the level before are not steps
    penalty: float = 1.5  # segmentation penalty, in units of the series' noise x log(n)
    machine_wide: float = 2 / 3  # share of a fingerprint's latency series moving at once

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 1) or self.min_change < 0 or self.min_size < 2 or self.penalty <= 0:
            raise UserError(
                "history step rules: need 0 < alpha < 1, min_change >= 0, min_size >= 2, penalty > 0"
            )
        if not (0 < self.machine_wide <= 1):
            raise UserError("history step rules: need 0 < machine_wide <= 1")


@dataclass(frozen=True)
class Point:
    """One commit of a series: its value (median over `runs` runs) and when it was first measured."""

    commit: str
    time: datetime
    value: float
    runs: int


@dataclass(frozen=True)
class Series:
    fingerprint: str
    machine: str  # for people: host, CPU or GPU, threads
    label: str
    metric: str
    points: tuple[Point, ...]

    @property
    def values(self) -> np.ndarray:
        return np.array([p.value for p in self.points], dtype=float)


@dataclass(frozen=True)
class Step:
    """A level change in a series at `index` (the first point of the new level)."""

    fingerprint: str
    machine: str
    label: str
    metric: str
    index: int
    commit: str  # first commit at the new level
    previous_commit: str  # last commit at the old level
    time: datetime
    before: float  # level before (median of the segment; memory: the value)
    after: float
    p_value: float | None  # None: exact (memory)
    n_before: int  # commits behind each level
    n_after: int
    machine_wide: bool = False  # most latency series of this fingerprint stepped here too

    @property
    def change(self) -> float | None:
        """after / before - 1 (None when before is 0)."""
        return self.after / self.before - 1 if self.before else None

    @property
    def delta(self) -> float:
        return self.after - self.before

    @property
    def exact(self) -> bool:
        return self.p_value is None

    @property
    def regression(self) -> bool:
        """Slower or bigger, and not a step of the whole machine."""
        return self.after > self.before and not self.machine_wide

    @property
    def confidence(self) -> float:
        return 1.0 if self.p_value is None else 1.0 - self.p_value

    @property
    def bisect(self) -> str:
        """The commit range to bisect, in `git log` / `git bisect` terms: good..bad."""
        return f"{self.previous_commit[:12]}..{self.commit[:12]}"


def series_points(rows: Sequence[dict], exact: bool) -> tuple[Point, ...]:
    """Per-commit points from run rows (`commit`, `timestamp_utc`, `value`), ordered by each
    commit's first run."""
    by_commit: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["timestamp_utc"]):
        by_commit.setdefault(row["commit"], []).append(row)
    points = []
    for commit, group in by_commit.items():
        values = [float(r["value"]) for r in group]
        value = Counter(values).most_common(1)[0][0] if exact else float(np.median(values))
        points.append(Point(commit, group[0]["timestamp_utc"], value, len(group)))
    return tuple(points)


def detect_all(series: Sequence[Series], rules: StepRules | None = None) -> list[Step]:
    """The steps of every series, machine-wide ones marked."""
    rules = rules or StepRules()
    return mark_machine_wide([s for one in series for s in detect(one, rules)], series, rules)


def detect(series: Series, rules: StepRules | None = None) -> list[Step]:
    """The steps of one series, oldest first."""
    rules = rules or StepRules()
    if _is_exact(series.metric):
        return _exact_steps(series)
    return _noisy_steps(series, rules)


def _step(series: Series, index: int, before: float, after: float, p: float | None, nb: int, na: int) -> Step:
    pts = series.points
    return Step(
        series.fingerprint, series.machine, series.label, series.metric, index, pts[index].commit,
        pts[index - 1].commit, pts[index].time, before, after, p, nb, na,
    )  # fmt: skip


def _exact_steps(series: Series) -> list[Step]:
    values = series.values
    changes = [i for i in range(1, len(values)) if values[i] != values[i - 1]]
    steps = []
    for k, i in enumerate(changes):
        start = changes[k - 1] if k else 0
        end = changes[k + 1] if k + 1 < len(changes) else len(values)
        steps.append(_step(series, i, values[i - 1], values[i], None, i - start, end - i))
    return steps


def noise(log_values: np.ndarray) -> float:
    """A robust scale of the point-to-point noise: MAD of the first differences / sqrt(2),
    scaled to a normal's standard deviation; levels and a few outliers do not move it."""
    if len(log_values) < 3:
        return 0.0
    diffs = np.diff(log_values)
    return float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / np.sqrt(2))


def segments(log_values: np.ndarray, rules: StepRules) -> list[int]:
    """Segment ends (exclusive, the last is n): binary segmentation with an L1 cost."""
    n = len(log_values)
    if n < 2 * rules.min_size:
        return [n]
    sigma = max(noise(log_values), 1e-3)
    # Binary segmentation, not PELT: ruptures' PELT is quadratic in pure Python (13 s for 1,000
    # commits here), binary segmentation 0.1-0.4 s, and it found the same steps in the tests.
    # `binseg_l1` is ruptures' Binseg without its 0.9 s of imports (tested against it).
    return binseg_l1(log_values, rules.min_size, rules.penalty * sigma * np.log(n))


def _merged(log_values: np.ndarray, ends: list[int], rules: StepRules) -> list[int]:
    """Drop boundaries between segments whose levels agree within `min_change`, and short
    excursions whose neighbours agree with each other."""
    threshold = np.log1p(rules.min_change)
    changed = True
    while changed and len(ends) > 1:
        changed = False
        starts = [0, *ends[:-1]]
        levels = [float(np.median(log_values[s:e])) for s, e in zip(starts, ends, strict=True)]
        for k in range(len(ends) - 1):
            if abs(levels[k + 1] - levels[k]) < threshold:
                del ends[k]
                changed = True
                break
        if changed:
            continue
        for k in range(1, len(ends) - 1):
            short = ends[k] - starts[k] < rules.persist
            if short and abs(levels[k + 1] - levels[k - 1]) < threshold:
                del ends[k - 1 : k + 1]  # the excursion and its way back: one level again
                changed = True
                break
    return ends


def _noisy_steps(series: Series, rules: StepRules) -> list[Step]:
    values = series.values
    if len(values) < 2 * rules.min_size or (values <= 0).any():
        return []
    logs = np.log(values)
    ends = _merged(logs, segments(logs, rules), rules)
    starts = [0, *ends[:-1]]
    steps = []
    for k in range(1, len(ends)):
        before, after = logs[starts[k - 1] : ends[k - 1]], logs[starts[k] : ends[k]]
        level_b, level_a = float(np.median(before)), float(np.median(after))
        if abs(level_a - level_b) < np.log1p(rules.min_change):
            continue
        p = mann_whitney_p(after, before)
        if p >= rules.alpha:
            continue
        steps.append(
            _step(
                series, starts[k], float(np.exp(level_b)), float(np.exp(level_a)), p, len(before), len(after)
            )
        )
    return steps


def mark_machine_wide(steps: Sequence[Step], series: Sequence[Series], rules: StepRules) -> list[Step]:
    """`steps` with the machine-wide latency steps marked: at the step's commit, at least
    `machine_wide` of the fingerprint's latency series searched (4 or more) moved the same way
    by more than half of `min_change` and more than two standard errors of its own noise
    (median of the `min_size` commits from the step's commit against the `min_size` before it),
    whether or not their own move was large enough to be a step."""
    peers: dict[str, list[Series]] = {}
    for one in series:
        if not _is_exact(one.metric):
            peers.setdefault(one.fingerprint, []).append(one)
    out = []
    for step in steps:
        group = peers.get(step.fingerprint, [])
        if step.exact or len(group) < 4:
            out.append(step)
            continue
        moved = 0
        for other in group:
            commits = [p.commit for p in other.points]
            if step.commit not in commits:
                continue
            i = commits.index(step.commit)
            values = other.values
            w = rules.min_size  # local windows: a load episode elsewhere must not count here
            before, after = (
                values[max(0, i - min(w, step.n_before)) : i],
                values[i : i + min(w, step.n_after)],
            )
            if len(before) and len(after) and np.median(before) > 0 and np.median(after) > 0:
                change = float(np.log(np.median(after) / np.median(before)))
                # beyond the series' own noise: 2 standard errors of a difference of medians
                floor = (
                    _SE_MOVED
                    * 1.25
                    * noise(np.log(values[values > 0]))
                    * np.sqrt(1 / len(before) + 1 / len(after))
                )
                needed = max(np.log1p(rules.min_change / 2), floor)
                moved += change > needed if step.after > step.before else change < -needed
        wide = moved >= rules.machine_wide * len(group)
        out.append(replace(step, machine_wide=True) if wide else step)
    return out


def _is_exact(metric: str) -> bool:
    return metric in MEMORY_METRICS or metric.endswith("_bytes")
