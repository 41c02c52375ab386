import math

import numpy as np
import pytest

from bench_lib.records.stats import ratio_of, summarize, trimmed_mean


def test_summarize_matches_hand_computed_values():
    s = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s.median, s.mean, s.min, s.max) == (3.0, 3.0, 1.0, 5.0)
    # linear interpolation: p90 at rank 0.9 * 4 = 3.6 -> 4 + 0.6 * (5 - 4)
    assert s.p90 == pytest.approx(4.6)
    assert s.p99 == pytest.approx(4.96)
    assert s.iqr == pytest.approx(2.0)  # p75 = 4, p25 = 2
    assert s.stddev == pytest.approx(math.sqrt(2.5))  # sample standard deviation
    assert s.rounds == 5


def test_single_sample_has_zero_spread():
    s = summarize([2.0])
    assert s.stddev == 0.0 and s.iqr == 0.0 and s.median == 2.0


def test_noisy_flag_uses_iqr_over_median():
    assert not summarize([10.0, 10.1, 10.2, 10.3]).noisy
    assert summarize([10.0, 12.0, 14.0, 16.0]).noisy


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, -1.0]])
def test_summarize_rejects_bad_samples(bad):
    with pytest.raises(ValueError):
        summarize(bad)


def test_ratio_of_medians():
    assert ratio_of([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ratio_of([1.0], [0.0])


def test_a_ratio_interval_is_widened_by_the_spread_between_runs_in_quadrature():
    from bench_lib.records.stats import Estimate, with_run_spread

    within = Estimate(0.8, 0.8 * math.exp(-0.01), 0.8 * math.exp(0.01), n=5)
    # by hand: z = 1.959964, z * 0.012 = 0.0235196; sqrt(0.01^2 + 0.0235196^2) = 0.0255572
    wide = with_run_spread(within, 0.012)
    assert (wide.value, wide.n) == (0.8, 5)
    assert (wide.low, wide.high) == pytest.approx(
        (0.8 * math.exp(-0.0255572), 0.8 * math.exp(0.0255572)), rel=1e-6
    )
    assert with_run_spread(within, 0.0) == within
    assert with_run_spread(Estimate(0.8, n=1), 0.012) == Estimate(0.8, n=1)  # one process: no interval


def test_trimmed_mean_drops_a_fifth_from_each_end():
    # 10 values: int(0.2 * 10) = 2 dropped from each end, by hand (3 + 4 + 5 + 6 + 7 + 8) / 6 = 5.5
    assert trimmed_mean([100.0, 0.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 1.0, 90.0]) == pytest.approx(5.5)
    # 5 rounds: one dropped from each end; two-speed rounds (1, 1, 2, 2, 2 ms) average to 5/3
    assert trimmed_mean([1.0, 2.0, 1.0, 2.0, 2.0]) == pytest.approx(5 / 3)
    # 4 rounds: int(0.8) = 0 dropped, the plain mean
    assert trimmed_mean([1.0, 1.0, 1.0, 5.0]) == pytest.approx(2.0)
    # against scipy's trim_mean (the suite computes it with numpy only: gpu-check has no scipy)
    from scipy import stats as sps

    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 5, 7, 10, 23):
        values = rng.lognormal(size=n)
        assert trimmed_mean(values) == pytest.approx(sps.trim_mean(values, 0.2), rel=1e-12)


def test_a_ratio_of_trimmed_means_averages_two_speed_rounds_where_the_median_jumps():
    # rounds at 1 ms or 2 ms: 3 slow of 5 flips the median to 2.0, the trimmed mean moves by 1/3
    reference = [1.0, 1.0, 1.0, 1.0, 1.0]
    assert ratio_of([1.0, 2.0, 2.0, 1.0, 2.0], reference) == pytest.approx(2.0)
    assert ratio_of([1.0, 2.0, 2.0, 1.0, 2.0], reference, trimmed_mean) == pytest.approx(5 / 3)


# ---------------------------------------------------------------- confidence intervals


def _coverage(half_width, n, trials=4000, seed=1):
    """How often mean +- half_width(values) contains the true mean, for n normal values."""

    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        values = rng.normal(0.8, 0.01, n)
        hits += abs(values.mean() - 0.8) <= half_width(values)
    return hits / trials


@pytest.mark.parametrize("n", [3, 5, 12])
def test_the_t_interval_covers_the_true_mean_95_percent_of_the_time(n):
    from bench_lib.records.stats import t_half_width

    assert 0.94 <= _coverage(t_half_width, n) <= 0.96


def test_the_coverage_check_catches_a_too_narrow_interval():
    """A normal (z) interval, or a percentile bootstrap, on a handful of processes: the kind of
    interval the t-interval replaces. The same check sees them cover far less than 95%."""

    def z_interval(values):
        return 1.96 * np.std(values, ddof=1) / np.sqrt(len(values))

    rng = np.random.default_rng(2)

    def bootstrap(values):
        means = rng.choice(values, (200, len(values))).mean(axis=1)
        lo, hi = np.percentile(means, [2.5, 97.5])
        return max(values.mean() - lo, hi - values.mean())

    assert _coverage(z_interval, 3) < 0.85
    assert _coverage(bootstrap, 4, trials=1000) < 0.85


def test_an_interval_needs_two_processes_and_matches_scipy():
    from scipy import stats

    from bench_lib.records.stats import median_estimate, t_half_width

    assert t_half_width([0.9]) is None
    values = [0.81, 0.83, 0.80, 0.84, 0.82]
    low, high = stats.t.interval(0.95, 4, loc=np.mean(values), scale=stats.sem(values))
    assert t_half_width(values) == pytest.approx((high - low) / 2)
    one = median_estimate({0: (1.0, 2.0, 3.0)})
    assert one.value == 2.0 and one.low is None and one.n == 1
    two = median_estimate({0: (1.0, 1.0), 1: (4.0, 4.0)})  # medians 1 and 4, pooled median 2.5
    # logs 0 and ln 4: mean ln 2 (geometric mean 2), sd ln4 / sqrt(2), h = t(0.975, 1) * ln4 / 2;
    # the interval 2 x exp(+-h) already contains the pooled 2.5
    h = stats.t.ppf(0.975, 1) * np.log(4) / 2
    assert two.value == 2.5 and (two.low, two.high) == pytest.approx((2 * np.exp(-h), 2 * np.exp(h)))


def test_a_zero_median_gives_no_interval_rather_than_nan():
    from bench_lib.records.stats import median_estimate, paired_ratio

    zero = paired_ratio({0: (0.0,), 1: (1.0,)}, {0: (1.0,), 1: (1.0,)})
    assert zero.low is None and zero.value == 0.5
    assert median_estimate({0: (0.0, 0.0), 1: (1.0, 1.0)}).low is None


def test_the_median_interval_contains_the_pooled_median_even_off_centre():
    from bench_lib.records.stats import median_estimate

    # the first process has many rounds at 1.0, the others few at 2.0: pooled median 1.0, but
    # the per-process medians' geometric mean is 2^(2/3) = 1.587
    m = median_estimate({0: (1.0,) * 20, 1: (2.0, 2.0), 2: (2.0, 2.1)})
    assert m.value == 1.0 and m.low <= 1.0 <= m.high
