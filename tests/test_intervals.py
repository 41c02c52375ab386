"""The one rule every output uses to read a figure and its 95% interval (bench_lib.analysis.intervals),
each with an input that must fail it."""

import math

import pandas as pd
import pytest

from bench_lib.analysis.intervals import (
    NO_DIFFERENCE,
    REFERENCE,
    Difference,
    Estimate,
    describe_ratio,
    format_estimate,
    format_ratio,
    intervals_overlap,
    overlap_text,
    ratio_difference,
)


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (Estimate(0.83, 0.81, 0.85), Difference.LOWER),
        (Estimate(1.12, 1.05, 1.19), Difference.HIGHER),
        (Estimate(0.98, 0.95, 1.01), Difference.NONE),  # contains 1.0: not a saving
        (Estimate(1.02, 0.99, 1.05), Difference.NONE),  # nor a cost
        (Estimate(0.97, 0.94, 1.0), Difference.NONE),  # an end at 1.0 counts as containing it
        (Estimate(0.83), Difference.UNKNOWN),  # one process: no interval, no claim
        (Estimate(None), Difference.UNKNOWN),
    ],
)
def test_a_ratio_is_a_measurable_difference_only_when_its_interval_excludes_one(ratio, expected):
    assert ratio_difference(ratio) is expected


def test_missing_cells_read_as_no_interval():
    for missing in (None, math.nan, pd.NA):
        assert Estimate.of(0.9, missing, missing) == Estimate(0.9)
    row = pd.Series({"latency_ratio_to_grad": 0.9, "latency_ratio_to_grad_ci_low": pd.NA})
    assert Estimate.from_row(row, "latency_ratio_to_grad") == Estimate(0.9)  # high end absent too


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [
        (0.95, 0.85, "interval low end 0.95 is above its high end 0.85"),
        (0.85, None, "an interval needs both ends, got low=0.85, high=None"),
        (None, 0.95, "an interval needs both ends, got low=None, high=0.95"),
    ],
)
def test_malformed_intervals_are_refused_with_what_arrived(low, high, message):
    with pytest.raises(ValueError, match=message):
        Estimate(0.9, low, high)


def test_words_follow_the_rule():
    saving = describe_ratio(Estimate(0.83, 0.81, 0.85), "less time", "more time", "grad")
    assert saving == "17% less time (95% CI 15-19%; 0.830x grad)"
    cost = describe_ratio(Estimate(1.25, 1.2, 1.3), "less step time", "more step time", "full")
    assert cost == "25% more step time (95% CI 20-30%; 1.250x full)"
    # the input that must not read as a saving: 0.98 whose interval contains 1.0
    none = describe_ratio(Estimate(0.98, 0.95, 1.01), "less time", "more time", "grad")
    assert none == f"{NO_DIFFERENCE} (0.980x grad, 95% CI 0.950-1.010)" and "less" not in none
    # without an interval the figure stands alone: neither measurable nor not
    alone = describe_ratio(Estimate(0.985), "less time", "more time", "grad")
    assert alone == "0.98x grad (1.5% less time; no interval)" and "measurable" not in alone


def test_table_cells_show_the_interval_and_say_no_measurable_difference():
    assert format_estimate(Estimate(0.828, 0.815, 0.841)) == "0.828 ±0.013"  # centred
    assert format_estimate(Estimate(0.828, 0.80, 0.841)) == "0.828 [0.800, 0.841]"  # not centred
    assert format_estimate(Estimate(0.828)) == "0.828" and format_estimate(Estimate(None)) == "-"
    assert format_ratio(Estimate(0.98, 0.95, 1.01)) == f"0.980 ±0.030 ({NO_DIFFERENCE})"
    assert format_ratio(Estimate(0.96, 0.94, 0.98)) == "0.960 ±0.020"
    assert format_ratio(Estimate(0.98)) == "0.980"  # no interval: no remark
    # the reference's own row (ratio 1, interval [1, 1]) is the reference, not "no difference"
    assert format_ratio(Estimate(1.0, 1.0, 1.0)) == REFERENCE
    assert format_ratio(Estimate(1.0, 0.99, 1.01)) == f"1.000 ±0.010 ({NO_DIFFERENCE})"  # measured


def test_overlap_of_two_intervals():
    a = Estimate(1.0, 0.9, 1.1)
    assert intervals_overlap(a, Estimate(1.15, 1.05, 1.25)) is True
    assert intervals_overlap(a, Estimate(1.2, 1.1, 1.3)) is True  # touching ends overlap
    assert intervals_overlap(a, Estimate(1.3, 1.2, 1.4)) is False
    assert intervals_overlap(a, Estimate(1.3)) is None  # one side without: no claim
    assert (
        overlap_text(False) == "non-overlapping intervals" and overlap_text(True) == "overlapping intervals"
    )
    assert overlap_text(pd.NA) == "" and overlap_text(None) == ""
