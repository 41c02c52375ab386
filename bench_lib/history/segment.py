"""The two computations of latency change points, in numpy and the standard library only:
binary segmentation with an L1 cost, and the two-sided Mann-Whitney U test.

Why not `ruptures.Binseg(model="l1")` and `scipy.stats.mannwhitneyu`, which they reproduce: both
libraries load scipy (ruptures imports every cost it has, and two of them import scipy.spatial and
scipy.stats), 0.9 s of imports on this project's machine, for a `history show` whose whole budget
is 1 s and whose arithmetic takes 0.2 s. Both stay the references: `tests/test_history_segment.py`
checks these functions against them, breakpoint for breakpoint and p-value for p-value (exact and
asymptotic, with and without ties), and the tests fail when either drifts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import numpy as np


def l1_cost(values: np.ndarray, start: int, end: int) -> float:
    """Sum of absolute deviations from the median of values[start:end] (ruptures' `CostL1`)."""
    sub = values[start:end]
    return float(np.abs(sub - np.median(sub)).sum())


def binseg_l1(values: np.ndarray, min_size: int, penalty: float) -> list[int]:
    """Segment ends (exclusive; the last is len(values)) by binary segmentation with an L1 cost,
    as `ruptures.Binseg(model="l1", min_size=min_size, jump=1).fit(values).predict(pen=penalty)`:
    split the segment whose best split lowers the cost most, while that gain exceeds `penalty`;
    every segment at least max(min_size, 2) long. Ties go as in ruptures (the later split point
    within a segment; the first segment among equal gains)."""
    values = np.asarray(values, dtype=float).ravel()
    n = len(values)
    min_size = max(min_size, 2)

    @cache
    def best_split(start: int, end: int) -> tuple[int | None, float]:
        whole = l1_cost(values, start, end)
        candidates = [
            (whole - l1_cost(values, start, b) - l1_cost(values, b, end), b)
            for b in range(start + min_size, end - min_size + 1)
        ]
        if not candidates:
            return None, 0.0
        gain, split = max(candidates)
        return split, gain

    ends = [n]
    while True:
        split, gain = max(
            (best_split(s, e) for s, e in zip([0, *ends[:-1]], ends, strict=True)), key=lambda x: x[1]
        )
        if split is None or not gain > penalty:
            return ends
        ends = sorted([*ends, split])


def _average_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks, ties given their average rank, and the size of every group of ties."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(values)])
    average = starts + (sizes + 1) / 2  # ranks starts+1 .. starts+size, averaged
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(average, sizes)
    return ranks, sizes


def _u_counts(m: int, n: int) -> list[int]:
    """How many of the C(m + n, m) orderings give U = 0, 1, ..., m * n: the coefficients of the
    Gaussian binomial [m + n choose m](q) = prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i), exact in
    Python integers (a power series truncated at degree m * n, where the polynomial ends)."""
    degree = m * n
    c = [1] + [0] * degree
    for i in range(1, m + 1):
        a = n + i
        for k in range(degree, a - 1, -1):  # times (1 - q^a)
            c[k] -= c[k - a]
    for i in range(1, m + 1):
        for k in range(i, degree + 1):  # divided by (1 - q^i)
            c[k] += c[k - i]
    return c


def mann_whitney_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test of x against y, as
    `scipy.stats.mannwhitneyu(x, y, alternative="two-sided")` computes it by default: the exact
    distribution when one sample has at most 8 values and there are no ties, else the normal
    approximation with tie correction and continuity correction."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need values")
    if np.isnan(a).any() or np.isnan(b).any():  # as scipy: no p-value from missing values
        return float("nan")
    ranks, ties = _average_ranks(np.concatenate([a, b]))
    u1 = float(ranks[:n1].sum()) - n1 * (n1 + 1) / 2
    u = max(u1, n1 * n2 - u1)
    if min(n1, n2) <= 8 and not (ties > 1).any():
        counts = _u_counts(min(n1, n2), max(n1, n2))
        tail = sum(counts[round(u) :])
        return min(1.0, 2 * tail / math.comb(n1 + n2, n1))
    n = n1 + n2
    tie_term = float((ties.astype(float) ** 3 - ties).sum())
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:  # every value the same (rounding may leave it just below 0): nothing to tell apart
        return 1.0
    s = math.sqrt(variance)
    z = (u - n1 * n2 / 2 - 0.5) / s
    return min(1.0, math.erfc(z / math.sqrt(2)))  # 2 x the normal's upper tail at z
