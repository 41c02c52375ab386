import math

import pytest

from bench_lib.records.stats import ratio_of_medians, summarize


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
    assert ratio_of_medians([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ratio_of_medians([1.0], [0.0])
