"""The change points' own binary segmentation and Mann-Whitney test against the libraries they
stand in for (ruptures and scipy stay test dependencies for this): same breakpoints, same p-values."""

import numpy as np
import pytest
import ruptures
from scipy import stats

from bench_lib.history.segment import _u_counts, binseg_l1, l1_cost, mann_whitney_p


def _series(rng, n, steps):
    """Log-latency-like series: noise of sd 0.03 with occasional outliers, levels stepping."""
    values = rng.normal(0, 0.03, n)
    for at, size in steps:
        values[at:] += size
    spikes = rng.random(n) < 0.05
    values[spikes] += rng.exponential(0.2, spikes.sum())
    return values


@pytest.mark.parametrize("seed", range(12))
def test_binary_segmentation_finds_the_breakpoints_ruptures_finds(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 160))
    steps = [(int(rng.integers(1, n)), float(rng.choice([-1, 1]) * rng.uniform(0.02, 0.3))) for _ in range(3)]
    values = _series(rng, n, steps)
    for min_size in (2, 4):
        for penalty in (0.01, 0.05, 0.2, 1.0):
            reference = ruptures.Binseg(model="l1", min_size=min_size, jump=1).fit(values.reshape(-1, 1))
            if n < 2 * min_size:
                continue
            assert binseg_l1(values, min_size, penalty) == reference.predict(pen=penalty), (
                n,
                min_size,
                penalty,
            )


def test_binary_segmentation_places_a_clear_step_and_stops_on_a_flat_series():
    values = np.r_[np.zeros(10), np.ones(10)]  # by hand: one split at 10 removes the whole cost, 10
    assert l1_cost(values, 0, 20) == 10.0
    assert binseg_l1(values, 4, 9.9) == [10, 20]
    assert binseg_l1(values, 4, 10.0) == [20]  # a gain must exceed the penalty
    assert binseg_l1(np.zeros(30), 4, 1e-9) == [30]


def _cases():
    rng = np.random.default_rng(7)
    yield [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]  # exact, the most extreme of 20 orderings
    yield [3.1, 1.2, 2.5, 0.7], [2.2, 0.1, 5.5, 6.0, 4.4]  # exact, mixed
    yield [1.0, 2.0, 2.0, 3.0], [2.0, 4.0, 5.0]  # ties: asymptotic
    yield [5.0] * 4, [5.0] * 6  # all tied: no evidence
    for _ in range(30):
        n1, n2 = int(rng.integers(1, 14)), int(rng.integers(1, 40))
        x = rng.normal(0, 1, n1)
        y = rng.normal(rng.uniform(-2, 2), 1, n2)
        if rng.random() < 0.3:  # rounded: ties
            x, y = np.round(x, 1), np.round(y, 1)
        yield list(x), list(y)


@pytest.mark.parametrize(("x", "y"), list(_cases()))
def test_mann_whitney_p_values_are_scipys(x, y):
    expected = stats.mannwhitneyu(y, x, alternative="two-sided").pvalue
    assert mann_whitney_p(y, x) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_the_exact_u_distribution_by_hand():
    # m = 2, n = 2: the 6 orderings give U = 0, 1, 2, 2, 3, 4
    assert _u_counts(2, 2) == [1, 1, 2, 1, 1]
    assert sum(_u_counts(8, 500)) == __import__("math").comb(508, 8)
    assert mann_whitney_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(2 / 20)
    with pytest.raises(ValueError):
        mann_whitney_p([], [1.0])
    assert np.isnan(mann_whitney_p([1.0, float("nan"), 3.0], [4.0, 5.0]))  # scipy: nan too
    assert mann_whitney_p([5.0] * 500_000, [5.0] * 500_000) == 1.0  # all tied, rounding below 0
