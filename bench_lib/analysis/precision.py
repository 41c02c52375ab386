"""How honest and how tight the confidence intervals of repeat runs are (`python -m bench_lib
precision REPORT REPORT...`): the figures behind README's "How precise are the figures".

- Coverage: for every case and every pair of runs, do the two runs' estimates differ by no
  more than their combined half-widths, sqrt(h1^2 + h2^2)? With honest 95% intervals that holds
  for 95% of pairs or a little more (the difference of two independent estimates has the
  combined standard error, and t quantiles of few processes are wider than 1.96). Well under
  90% means the intervals are too narrow: they miss variation between runs (the machine's
  drift, a run's shared state) that the processes of one run do not show.
- Target: the share of ratios whose interval is within the precision target (relative
  half-width), per run.
- The spread between runs: how much a ratio moves from run to run beyond what each run's own
  processes measured, which is what `ci_run_sd` should be on this machine. Intervals wider
  than that are wasted precision; narrower, they miss (the reports say the `ci_run_sd` they were
  widened by, from schema 6).
Torch-free, like the rest of the analysis side.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd

from bench_lib.errors import UserError
from bench_lib.records.cases import KEY_FIELDS
from bench_lib.records.stats import CONFIDENCE, Z_CONFIDENCE

RATIOS = ("latency_ratio_to_grad", "latency_ratio_to_full")
# The stop reasons of groups that aimed at no target (`measure.runner`'s FIXED and NO_RATIO; not
# imported from there: it imports torch, and the analysis side stays torch-free)
UNAIMED = frozenset({"fixed", "no_ratio"})
FIGURES = (*RATIOS, "latency_ms_median")


def figure_rows(frame: pd.DataFrame, figure: str, extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per case that has `figure` and its interval: the case key, `value`, `low`,
    `high` (and the `extra` columns, empty where the report lacks them). Reference cases
    (ratio 1 to themselves) are left out of the ratios."""
    low, high = f"{figure}_ci_low", f"{figure}_ci_high"
    if figure not in frame or low not in frame:
        return pd.DataFrame(columns=[*KEY_FIELDS, "value", "low", "high", *extra])
    rows = frame[frame["status"].eq("ok") & frame[figure].notna() & frame[low].notna()]
    if figure in RATIOS:
        rows = rows[(rows[high] - rows[low]) > 0]  # the reference: exactly 1, a zero-width interval
    out = rows[list(KEY_FIELDS)].copy()
    out["value"], out["low"], out["high"] = (rows[c].astype(float) for c in (figure, low, high))
    for column in extra:
        out[column] = rows[column].astype(float) if column in rows else np.nan
    return out.reset_index(drop=True)


def own_rows(frame: pd.DataFrame, figure: str, run_sd: float | None = None) -> pd.DataFrame | None:
    """`figure_rows` of a ratio with each interval narrowed to what the run's own processes
    measured (its `ci_run_sd`, or `run_sd` when given, taken out as `own_half_width` does), and
    `se`, the standard error of the log ratio that interval stands for: its log half-width over
    the t quantile of its processes (a t-interval of 4 processes is 3.18 standard errors wide
    each way, not 1.96; the normal quantile where the report does not say its processes). Empty
    when the run has no such ratio; None when the report does not say what its intervals were
    widened by (older than schema 6) and `run_sd` is not given."""
    from scipy import stats as sps

    rows = figure_rows(frame, figure, extra=("ci_run_sd", "processes"))
    if run_sd is not None:
        rows["ci_run_sd"] = run_sd
    if rows["ci_run_sd"].isna().any() or (rows.empty and "ci_run_sd" not in frame):
        return None
    rows = rows[(rows["value"] > 0) & ~(rows["processes"] < 2)]
    own = own_log_half_width(rows["value"], rows["high"], rows["ci_run_sd"])
    t = sps.t.ppf(0.5 + CONFIDENCE / 2, rows["processes"] - 1)
    t = np.where(np.isnan(t), Z_CONFIDENCE, t)
    return rows.assign(low=rows["value"] * np.exp(-own), high=rows["value"] * np.exp(own), se=own / t)


@dataclass(frozen=True)
class Spread:
    """The spread of a ratio's log between runs beyond each run's own processes (`run_spread`)."""

    figure: str
    value: float  # standard deviation of the log ratio
    low: float | None  # 95% interval, jackknife over runs (None with two runs)
    high: float | None
    runs: int  # runs that measured the figure
    used: tuple[float, ...]  # the ci_run_sd values its rows were widened by

    def verdict(self) -> str:
        """ "fits", "too wide", "too narrow" (the setting outside the interval), "unknown" (two
        runs: no interval) or "mixed" (rows widened by different values)."""
        if len(self.used) != 1:
            return "mixed"
        if self.low is None or self.high is None:
            return "unknown"
        setting = self.used[0]
        return "too wide" if setting > self.high else "too narrow" if setting < self.low else "fits"

    def describe(self) -> str:
        interval = "" if self.low is None else f", 95% interval {self.low:.2%} to {self.high:.2%}"
        return f"{self.value:.2%} (sd of the log ratio{interval}; {self.runs} runs)"


def _tau2(logs: np.ndarray, se2: np.ndarray) -> float | None:
    """The variance of a random run effect from a cases x runs table of log ratios and their own
    squared standard errors (NaN where a run lacks a case): per case the variance over its runs
    less its mean squared error, pooled with the weights of inverse variance that the variance of
    a sample variance gives, (n - 1) / (tau^2 + se^2)^2, iterated to a fixed point (as
    Paule-Mandel does): a case whose own processes were noisy counts for little. A case's
    weight and its excess share its own error, so where nothing moves between runs it errs high
    by a fraction of the cases' own standard error (0.2% for 0.5%): towards wider intervals.
    None when no case has two runs."""
    n = np.sum(~np.isnan(logs), axis=1)
    keep = n >= 2
    if not keep.any():
        return None
    logs, se2, n = logs[keep], se2[keep], n[keep]
    excess = np.nanvar(logs, axis=1, ddof=1) - np.nanmean(se2, axis=1)
    own = np.nanmean(se2, axis=1)
    tau2 = max(float(np.mean(excess)), 0.0)
    for _ in range(100):
        weights = (n - 1) / (tau2 + own) ** 2 if (tau2 + own).min() > 0 else (n - 1).astype(float)
        new = max(float(np.sum(weights * excess) / np.sum(weights)), 0.0)
        if abs(new - tau2) <= 1e-15:
            break
        tau2 = new
    return tau2


def run_spread(frames: Sequence[pd.DataFrame], figure: str, run_sd: float | None = None) -> Spread | None:
    """How far a ratio moves from one run to the next beyond what each run's own processes
    measured (`own_rows`): the `ci_run_sd` these runs support, `_tau2`'s estimate, with a 95%
    interval from a jackknife over runs (each run left out in turn; t quantile of runs - 1),
    its upper end raised to the chi-square bound of runs - 1 degrees of freedom. A whole run
    can move every ratio together, so the runs, not the cases, are what is replicated: with few
    runs the interval is wide, whatever the number of cases; and the advice errs towards wider
    intervals, which cost precision, not trust. None when a
    report does not say its `ci_run_sd` (and `run_sd` is not given) or no case has two runs."""
    return rows_spread([own_rows(f, figure, run_sd) for f in frames], figure)


def rows_spread(per_run: Sequence[pd.DataFrame | None], figure: str) -> Spread | None:
    """`run_spread` of each run's `own_rows`."""
    from scipy import stats as sps

    if any(r is None for r in per_run):
        return None
    present = [r for r in per_run if r is not None and not r.empty]
    if len(present) < 2:
        return None
    rows = pd.concat([r.assign(run=i) for i, r in enumerate(present)], ignore_index=True)
    rows["case"] = list(
        zip(*(rows[k].astype("string").fillna("").to_numpy() for k in KEY_FIELDS), strict=True)
    )
    logs = rows.pivot_table(index="case", columns="run", values="value", aggfunc="first")
    se2 = rows.assign(se2=rows["se"] ** 2).pivot_table(
        index="case", columns="run", values="se2", aggfunc="first"
    )
    logs, se2 = np.log(logs.to_numpy(dtype=float)), se2.reindex_like(logs).to_numpy(dtype=float)
    tau2 = _tau2(logs, se2)
    if tau2 is None:
        return None
    used = tuple(sorted({float(v) for v in rows["ci_run_sd"]}))
    k = logs.shape[1]
    low = high = None
    if k >= 3:
        left_out = [_tau2(np.delete(logs, j, axis=1), np.delete(se2, j, axis=1)) for j in range(k)]
        if all(v is not None for v in left_out):
            pseudo = k * tau2 - (k - 1) * np.array(left_out, dtype=float)
            half = float(sps.t.ppf(0.5 + CONFIDENCE / 2, k - 1) * np.std(pseudo, ddof=1) / np.sqrt(k))
            # the upper end no lower than where k runs of one shared shift each would put it
            # (chi-square with k - 1 degrees of freedom): the jackknife alone sits too low then,
            # and too low an upper end would advise intervals narrower than the machine allows
            shared = tau2 * (k - 1) / float(sps.chi2.ppf((1 - CONFIDENCE) / 2, k - 1))
            low, high = float(np.sqrt(max(tau2 - half, 0.0))), float(np.sqrt(max(tau2 + half, shared)))
    return Spread(figure, float(np.sqrt(tau2)), low, high, k, used)


@dataclass(frozen=True)
class Coverage:
    figure: str
    pairs: int  # (case, pair of runs) with an interval in both runs
    held: int  # of which the two estimates differ by at most sqrt(h1^2 + h2^2)
    worst: str  # the pair that missed by most, relative to its allowance ("" when none missed)

    @property
    def share(self) -> float:
        return self.held / self.pairs if self.pairs else float("nan")


def coverage(frames: Sequence[pd.DataFrame], figure: str) -> Coverage:
    """How often two runs' estimates of `figure` agree within their combined half-widths."""
    return rows_coverage([figure_rows(f, figure) for f in frames], figure)


def rows_coverage(rows: Sequence[pd.DataFrame], figure: str) -> Coverage:
    """`coverage` of each run's `figure_rows` (or `own_rows`)."""
    per_run = [r.set_index(list(KEY_FIELDS)) for r in rows]
    pairs = held = 0
    worst, worst_excess = "", 1.0
    for (i, a), (j, b) in itertools.combinations(enumerate(per_run), 2):
        both = a.merge(b, how="inner", left_index=True, right_index=True, suffixes=("_a", "_b"))
        if both.empty:
            continue
        h_a = (both["high_a"] - both["low_a"]) / 2
        h_b = (both["high_b"] - both["low_b"]) / 2
        allowed = np.sqrt(h_a**2 + h_b**2)
        diff = (both["value_a"] - both["value_b"]).abs()
        pairs += len(both)
        held += int((diff <= allowed).sum())
        excess = diff / allowed.where(allowed > 0)
        if excess.notna().any() and excess.max() > worst_excess:
            key = excess.idxmax()
            worst_excess = float(excess.max())
            label = "-".join(str(k) for k in key if k != "" and not pd.isna(k))
            worst = f"{label}, runs {i + 1} and {j + 1}: {diff[key]:.4g} apart, allowed {allowed[key]:.4g}"
    return Coverage(figure, pairs, held, worst)


def spread_beyond_intervals(frames: Sequence[pd.DataFrame], figure: str) -> float | None:
    """How much a ratio moves from run to run beyond what its reported intervals allow for,
    taking each whole interval for the t-interval of its processes (`run_spread` with
    `run_sd` 0): what `ci_run_sd` should grow by, in quadrature, for reports that do not say
    theirs (older than schema 6). Where they were widened, part of each half-width is a normal
    quantile's, so this errs high (towards wider intervals); None with fewer than two runs of a
    case."""
    spread = run_spread(frames, figure, run_sd=0.0)
    return None if spread is None else spread.value


def ratio_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Every ratio with an interval in one run (`figure_rows` of both ratio figures), with its
    relative half-width in `relative`, its figure in `figure` and the `ci_run_sd` it was widened
    by (NaN where the report does not say)."""
    rows = pd.concat(
        [figure_rows(frame, f, extra=("ci_run_sd",)).assign(figure=f) for f in RATIOS], ignore_index=True
    )
    rows["relative"] = (rows["high"] - rows["low"]) / 2 / rows["value"].abs()
    return rows


def target_share(frame: pd.DataFrame, precision: float) -> tuple[int, int]:
    """(ratios within +-`precision` relative half-width, ratios with an interval) in one run."""
    rows = ratio_rows(frame)
    return int((rows["relative"] <= precision).sum()), len(rows)


def own_half_width(value: float, high: float, run_sd: float) -> float:
    """The relative half-width of a reported ratio interval without the spread between runs it
    was widened by (`stats.with_run_spread`, in quadrature on the log scale): what the run's own
    processes measured, which is what adaptive effort judges against `ci_target`."""
    return float(np.sinh(own_log_half_width(value, high, run_sd)))


def own_log_half_width(value: Any, high: Any, run_sd: Any) -> Any:
    """The log half-width of an interval ending at `high` around `value` with the spread between
    runs taken out again (`stats.with_run_spread` added 1.96 x `run_sd` in quadrature); numbers
    or arrays alike."""
    h = np.log(high / value)
    return np.sqrt(np.maximum(h * h - (Z_CONFIDENCE * run_sd) ** 2, 0.0))


def run_line(frame: pd.DataFrame, ci_target: float, run_sd: float | None = None) -> str:
    """One line on a run's precision for the console: how wide its ratio intervals are, what of
    that is the spread between runs (each row's `ci_run_sd`, or `run_sd` for every row when
    given), how many ratios met the target and why groups stopped. "" when no ratio has an
    interval (one process per group)."""
    rows = ratio_rows(frame)
    if rows.empty:
        return ""
    if run_sd is not None:
        rows["ci_run_sd"] = run_sd
    rows["ci_run_sd"] = rows["ci_run_sd"].fillna(0.0)
    relative = rows["relative"]
    own = [
        own_half_width(v, h, sd)
        for v, h, sd in zip(rows["value"], rows["high"], rows["ci_run_sd"], strict=True)
    ]
    met = sum(o <= ci_target * (1 + 1e-9) for o in own)
    text = f"precision: {len(rows)} ratios, 95% intervals +-{relative.min():.1%} to +-{relative.max():.1%}"
    text += f" (median +-{relative.median():.1%})"
    settings = rows.drop_duplicates(["figure", "ci_run_sd"])
    measures = "`bench_lib precision` on repeat runs measures it)"
    if rows["ci_run_sd"].nunique() == 1:  # every ratio widened alike
        sd = float(rows["ci_run_sd"].iloc[0])
        if sd > 0:
            text += f", each with +-{np.sinh(Z_CONFIDENCE * sd):.2%} for the spread between runs (ci_run_sd {sd:.2%}; "
            text += measures
    elif (settings["ci_run_sd"] > 0).any():
        each = " or ".join(
            (f"+-{np.sinh(Z_CONFIDENCE * sd):.2%}" if sd > 0 else "nothing")
            + f" ({SUITE_OF[figure]}, ci_run_sd {sd:.2%})"
            for figure, sd in zip(settings["figure"], settings["ci_run_sd"], strict=True)
        )
        text += f", each with {each} for the spread between runs ({measures}"
    groups = frame[frame["status"].eq("ok")].drop_duplicates(
        ["suite", "model", "device", "batch_size", "dtype"]
    )
    reasons = groups["stop_reason"].dropna().value_counts() if "stop_reason" in groups else pd.Series()
    if set(reasons.index) - UNAIMED:  # adaptive effort aimed at the target
        reported = int((relative <= ci_target * (1 + 1e-9)).sum())
        text += (
            f"; {met} of {len(rows)} within the target +-{ci_target:.1%} on the run's own processes "
            f"(adaptive effort's measure; {reported} with the spread between runs)"
        )
    if "processes" in groups:
        counts = pd.to_numeric(groups["processes"], errors="coerce").dropna()
        if len(reasons) and len(counts):
            stopped = ", ".join(f"{k} {v}" for k, v in reasons.items())
            low, high = int(counts.min()), int(counts.max())
            text += f"; groups stopped: {stopped} ({low if low == high else f'{low}-{high}'} processes)"
    return text


def distinct_names(paths: Sequence[str]) -> list[str]:
    """Each path's shortest trailing part that tells it from the others (`run1/latest.csv`,
    `run2/latest.csv` rather than `latest.csv` twice); the whole path where nothing shorter does."""
    parts = [PurePath(p).parts for p in paths]
    for depth in range(1, max((len(x) for x in parts), default=1) + 1):
        names = [str(PurePath(*x[-depth:])) for x in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def render(frames: Sequence[pd.DataFrame], names: Sequence[str], precision: float) -> str:
    """The coverage of every figure and each run's share within target; `UserError` when the
    reports hold no interval at all (schema 4 or older, or runs of one process per group)."""
    if all(figure_rows(f, figure).empty for f in frames for figure in FIGURES):
        raise UserError(
            "these reports hold no confidence intervals (older than schema 5, or one process per group)"
        )
    lines = [f"{len(frames)} runs: " + ", ".join(names)]
    spreads: list[Spread] = []
    for figure in FIGURES:
        c = coverage(frames, figure)
        if not c.pairs:
            continue
        lines.append(
            f"{figure}: the estimates of two runs agreed within their combined half-widths in "
            f"{c.held} of {c.pairs} (case, pair of runs) = {c.share:.1%}"
        )
        if c.worst:
            lines.append(f"  furthest apart: {c.worst}")
        if figure in RATIOS:
            own = [own_rows(f, figure) for f in frames]
            spread = rows_spread(own, figure)
            if spread is not None:
                o = rows_coverage([r for r in own if r is not None], figure)
                lines.append(
                    f"  the runs' own processes alone (ci_run_sd taken out): {o.held} of {o.pairs} = "
                    f"{o.share:.1%}; the spread between runs beyond them: {spread.describe()}"
                )
                spreads.append(spread)
                continue
            unsaid = [n for n, r in zip(names, own, strict=True) if r is None]
            beyond = spread_beyond_intervals(frames, figure)
            if beyond is not None:
                lines.append(
                    f"  spread between runs beyond the intervals: {beyond:.2%} (sd of the log ratio; "
                    + ("the intervals allow for it" if beyond == 0 else "add it to ci_run_sd in quadrature")
                    + (
                        f"; {', '.join(unsaid)} "
                        + ("does not say its" if len(unsaid) == 1 else "do not say their")
                        + " ci_run_sd (older than schema 6)"
                        if unsaid
                        else ""
                    )
                    + ")"
                )
    if len(lines) == 1:
        raise UserError(
            "no case was measured in two of these runs: precision compares repeat runs of the same cases"
        )
    if spreads:
        lines.append(advice(spreads))
    for name, frame in zip(names, frames, strict=True):
        met, total = target_share(frame, precision)
        rows = pd.concat([figure_rows(frame, f) for f in RATIOS], ignore_index=True)
        if total:
            h = (rows["high"] - rows["low"]) / 2 / rows["value"].abs()
            lines.append(
                f"{name}: {met} of {total} ratios ({met / total:.0%}) within +-{precision:.1%}; relative "
                f"half-width min/median/max {h.min():.2%} / {h.median():.2%} / {h.max():.2%}"
            )
    return "\n".join(lines)


SUITE_OF = {"latency_ratio_to_grad": "inference", "latency_ratio_to_full": "fine-tuning"}
SETTING_OF = {"latency_ratio_to_grad": "inference", "latency_ratio_to_full": "finetune"}  # suite names


def _number(value: float) -> str:
    """A setting as short as it is exact to 0.01%: 0.006, 0.0089, 0.01."""
    return f"{value:.4f}".rstrip("0").rstrip(".")


def advice(spreads: Sequence[Spread]) -> str:
    """Whether each ratio figure's `ci_run_sd` fits the spread its runs show (the setting inside
    the spread's 95% interval), and what to set per suite where one does not: too narrow, its
    estimate (rounded up to 0.1%); too wide, the upper end of its interval (rounded down, not
    below the estimate), not the estimate, so that narrower intervals stay honest. A suite that
    fits keeps its setting as it is, as does one with no verdict from two runs; one whose rows
    were widened by different values is left out of the setting."""
    parts, verdicts = [], []
    for sp in spreads:
        widened = " / ".join(f"{u:.2%}" for u in sp.used)
        verdict = sp.verdict()
        verdicts.append(verdict)
        said = {
            "mixed": "rows widened by different values: no verdict",
            "unknown": "two runs give no interval: no verdict",
        }.get(verdict, verdict)
        parts.append(f"{SUITE_OF[sp.figure]} {sp.value:.2%} against {widened}: {said}")
    text = "ci_run_sd: " + "; ".join(parts) + ". "
    judged = [
        (sp, v) for sp, v in zip(spreads, verdicts, strict=True) if v in ("fits", "too wide", "too narrow")
    ]
    unjudged = (
        "" if len(judged) == len(spreads) else " Measure at least three runs of one setting for a verdict"
    )
    if not judged:
        return text + unjudged.strip() + "."
    if all(v == "fits" for _, v in judged):
        return (
            text
            + "The setting fits this machine (within what these runs can tell)."
            + (unjudged and unjudged + " on the others.")
        )

    def chosen(sp: Spread, verdict: str) -> str:
        if verdict == "too narrow":  # the estimate, rounded up to 0.1%
            return _number(math.ceil(sp.value * 1000 - 1e-9) / 1000)
        if verdict == "too wide":  # the upper end rounded down, to 0.1% where that stays above the estimate
            high = sp.high or 0.0
            for step in (1000, 10000):
                down = math.floor(high * step + 1e-9) / step
                if down >= sp.value:
                    return _number(down)
            return repr(math.floor(high * 1e6) / 1e6)
        return repr(sp.used[0])  # fits, or no verdict from two runs: kept as it is

    # a suite with one setting but no verdict keeps it in the table (which replaces pyproject's)
    values = {
        SETTING_OF[sp.figure]: chosen(sp, v) for sp, v in zip(spreads, verdicts, strict=True) if v != "mixed"
    }
    table = ", ".join(f"{k} = {v}" for k, v in values.items())
    env = ",".join(f"{k}={v}" for k, v in values.items())
    why = (
        "The intervals miss what happens between runs here"
        if "too narrow" in verdicts
        else "The intervals are wider than this machine needs"
    )
    wide = " (too wide: at most what these runs allow)" if "too wide" in verdicts else ""
    return text + (
        f"{why}: set ci_run_sd = {{{table}}} in [tool.bench_lib] (or BENCH_CI_RUN_SD={env}){wide}, "
        "then check it on new repeat runs (coverage should stay at 90% or more)."
        + (unjudged and unjudged + " on the others.")
    )
