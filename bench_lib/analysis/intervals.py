"""How a figure and its 95% confidence interval are read and shown: the one rule every output
(console, Markdown, HTML, the pytest summary, `compare`) uses.

A latency ratio (`latency_ratio_to_grad`, `latency_ratio_to_full`) is a *measurable* difference
only when its whole interval lies on one side of 1.0; an interval that contains 1.0 is "no
measurable difference", never a saving or a cost. Without an interval (one worker process, or a
report older than schema 5) the figure is shown alone and nothing is claimed either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import pandas as pd


class Difference(Enum):
    """What a ratio's interval says about the difference it measures."""

    LOWER = "lower"  # the whole interval below 1.0: measurably less (faster, smaller)
    HIGHER = "higher"  # the whole interval above 1.0: measurably more
    NONE = "no measurable difference"  # the interval contains 1.0
    UNKNOWN = "no interval"  # no interval: the figure alone, no claim


NO_DIFFERENCE = Difference.NONE.value


def _number(value: Any) -> float | None:
    """A float, or None for a missing value (None, NaN, pd.NA)."""
    if value is None or value is pd.NA:
        return None
    value = float(value)
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% confidence interval (`low`, `high`; both None when there is none).

    Raises ValueError for an interval with one end only, or whose low end is above its high end.
    """

    value: float | None
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if (self.low is None) != (self.high is None):
            raise ValueError(f"an interval needs both ends, got low={self.low}, high={self.high}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"interval low end {self.low} is above its high end {self.high}")

    @classmethod
    def of(cls, value: Any, low: Any = None, high: Any = None) -> Estimate:
        """From report cells (NaN and pd.NA read as missing)."""
        return cls(_number(value), _number(low), _number(high))

    @classmethod
    def from_row(cls, row: Any, column: str) -> Estimate:
        """`column` and its `<column>_ci_low` / `<column>_ci_high` from a report row (a Series or
        a mapping); missing interval columns read as no interval."""
        return cls.of(row.get(column), row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high"))

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.value is not None

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2


def ratio_difference(ratio: Estimate) -> Difference:
    """The rule: `LOWER` / `HIGHER` when the ratio's whole interval lies below / above 1.0,
    `NONE` when it contains 1.0 (ends included), `UNKNOWN` without an interval or a figure."""
    if ratio.value is None or ratio.low is None or ratio.high is None:
        return Difference.UNKNOWN
    if ratio.high < 1.0:
        return Difference.LOWER
    if ratio.low > 1.0:
        return Difference.HIGHER
    return Difference.NONE


def intervals_overlap(a: Estimate, b: Estimate) -> bool | None:
    """Whether two figures' intervals overlap (touching ends overlap); None when either has none.
    `compare` marks a change whose intervals do not overlap."""
    if a.low is None or a.high is None or b.low is None or b.high is None:
        return None
    return a.low <= b.high and b.low <= a.high


OVERLAPPING = "overlapping intervals"
NOT_OVERLAPPING = "non-overlapping intervals"


def overlap_text(overlap: object) -> str:
    """A change's intervals in words: NOT_OVERLAPPING, OVERLAPPING, or "" where either report
    had no interval (nothing is claimed)."""
    if overlap is None or overlap is pd.NA or pd.isna(overlap):
        return ""
    return OVERLAPPING if overlap else NOT_OVERLAPPING


def _symmetric(e: Estimate) -> bool:
    assert e.value is not None and e.low is not None and e.high is not None
    return math.isclose(e.high - e.value, e.value - e.low, rel_tol=0.05, abs_tol=1e-12)


def format_estimate(e: Estimate, digits: int = 3) -> str:
    """ "0.828 ±0.013" (an interval centred on the figure), "0.828 [0.810, 0.841]" (one that is
    not), "0.828" (none), "-" (no figure)."""
    if e.value is None:
        return "-"
    text = f"{e.value:.{digits}f}"
    if not e.has_interval:
        return text
    assert e.low is not None and e.high is not None
    if _symmetric(e):
        return f"{text} ±{(e.high - e.low) / 2:.{digits}f}"
    return f"{text} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


REFERENCE = "1 (reference)"


def is_reference(ratio: Estimate) -> bool:
    """Whether `ratio` is a reference's ratio to itself: exactly 1 with the interval [1, 1]
    (what the suites record for grad and full; a measured ratio's interval has a width)."""
    return ratio.value == 1.0 and ratio.low == 1.0 and ratio.high == 1.0


def format_ratio(ratio: Estimate, digits: int = 3) -> str:
    """A ratio for a table cell: the figure with its interval, and "no measurable difference"
    after it when the interval contains 1.0; REFERENCE for the reference's own row."""
    if is_reference(ratio):
        return REFERENCE
    text = format_estimate(ratio, digits)
    return f"{text} ({NO_DIFFERENCE})" if ratio_difference(ratio) is Difference.NONE else text


def format_range_percent(low: float, high: float) -> str:
    """ "15-19%" for two fractions (0.15, 0.19), smaller first."""
    a, b = sorted((low, high))
    return f"{a * 100:.1f}-{b * 100:.1f}%" if abs(b - a) < 0.02 else f"{a * 100:.0f}-{b * 100:.0f}%"


def percent(fraction: float) -> str:
    """ "17%", or "0.8%" below 2% (where rounding to a whole percent would hide the figure)."""
    return f"{fraction * 100:.1f}%" if abs(fraction) < 0.02 else f"{fraction * 100:.0f}%"


def describe_ratio(ratio: Estimate, less: str, more: str, of: str) -> str:
    """A ratio as words, by the rule: "17% less time (95% CI 15-19%; 0.83x grad)", "no measurable
    difference in time (0.99x grad, 95% CI 0.97-1.01)", or without an interval the figure alone:
    "0.83x grad's time (17% less; one process, no interval)".

    Parameters: `less` / `more` finish "17% ..." ("less time", "more time"); `of` names the
    reference ("grad", "full").
    """
    if ratio.value is None:
        return "-"
    r = ratio.value
    kind = ratio_difference(ratio)
    if kind is Difference.UNKNOWN:
        change = f"{percent(1 - r)} {less}" if r <= 1 else f"{percent(r - 1)} {more}"
        return f"{r:.2f}x {of} ({change}; no interval)"
    assert ratio.low is not None and ratio.high is not None
    if kind is Difference.NONE:
        return f"{NO_DIFFERENCE} ({r:.3f}x {of}, 95% CI {ratio.low:.3f}-{ratio.high:.3f})"
    if kind is Difference.LOWER:
        ci = format_range_percent(1 - ratio.high, 1 - ratio.low)
        return f"{percent(1 - r)} {less} (95% CI {ci}; {r:.3f}x {of})"
    ci = format_range_percent(ratio.low - 1, ratio.high - 1)
    return f"{percent(r - 1)} {more} (95% CI {ci}; {r:.3f}x {of})"
