"""The regression gate: a baseline and a candidate (each one or more reports), a verdict per case.

Every case of either side gets verdicts (one per memory metric and one for latency), and every
verdict has an outcome that decides the exit code:

- `failing` (exit 1): a latency regression; a memory figure that changed beyond the slack (bigger,
  or smaller: a stale baseline is updated, not silently kept); a case that succeeded in the
  baseline and failed, ran out of memory or is absent in the candidate.
- `undecided` (exit 3, when nothing fails): something the user asked to gate could not be gated
  or decided: latency across different machine fingerprints, memory across torch builds whose
  byte counts may differ, too few runs or too much noise while the observed slowdown is beyond
  the threshold, memory that differed between worker processes or between reports of one side.
- `cleared`: passed, including a latency test that was inconclusive while the observed change
  stays within the threshold (counted apart in the summary).
- `report-only`: shown, never counted (rules set to "report" for the matching cases).

Exit 0 only when nothing is failing or undecided; bad input is exit 2 (raised as `UserError`).

Latency: the unit is the median of one run (a report; several per side), or of one worker process
with `unit="process"`. A regression needs both a median slowdown beyond `latency_threshold` and a
one-sided Mann-Whitney U test, at level `alpha`, that the candidate's medians are slower than the
baseline's scaled by 1 + `margin` (half the threshold by default), so that a slowdown the runs
cannot tell from drift between them is not a regression - and not a pass either: it is undecided.
Gated only between reports whose machine fingerprints (and thread and malloc settings) match.

Memory: exact byte counts, gated between builds of one torch release. CPU rows: the release
without its local build tag (`2.13.0` and `2.13.0+cpu` are one release: the CPU kernels and
allocator are the same code). CUDA rows: the full torch version (its tag names the CUDA build), the
CUDA version and the cuDNN version must all match, since kernels, workspaces and the caching
allocator's rounding come from them.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench_lib.config import tool_table
from bench_lib.errors import UserError
from bench_lib.records.cases import KEY_FIELDS, Case
from bench_lib.records.schema import LATENCY, MEMORY_METRICS, read_csv_strict, read_report, samples_path

# Decisions: what the data says about one metric of one case.
PASS, REGRESSION, IMPROVED, INCONCLUSIVE, NOT_GATED, MISSING, BROKEN, NEW = (
    "pass",
    "regression",
    "improved",
    "inconclusive",
    "not gated",
    "missing",
    "broken",
    "new",
)
# Outcomes: what a decision means for the exit code.
CLEARED, FAILING, UNDECIDED, REPORT_ONLY = "cleared", "failing", "undecided", "report-only"
EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_UNDECIDED = 0, 1, 2, 3

CASE = "case"
# What must match for latency to be comparable at all.
FINGERPRINT = ("machine_id", "torch_threads", "cpu_malloc")
MODES = ("gate", "report")


@dataclass(frozen=True)
class Rules:
    """Decision settings for the cases a pattern matches (defaults for all).

    `latency` and `memory` are "gate" or "report" (report-only: the verdict is shown, never
    counted). `missing`, `not_gated` and `inconclusive` may be set to "report" to stop a case that
    is absent from the candidate, a metric that cannot be gated, or an undecided test from failing
    or holding the gate (e.g. for a model being removed); the defaults count them.
    """

    latency_threshold: float = 0.10
    alpha: float = 0.01
    min_samples: int = 4
    max_noise: float = 0.10
    margin: float | None = None  # the slowdown the test must establish; None: latency_threshold / 2
    memory_slack_bytes: int = 0
    latency: str = "gate"
    memory: str = "gate"
    missing: str = "gate"
    not_gated: str = "gate"
    inconclusive: str = "gate"

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 1) or self.latency_threshold < 0 or self.memory_slack_bytes < 0:
            raise UserError("gate rules: need 0 < alpha < 1, latency_threshold >= 0, memory_slack_bytes >= 0")
        if self.margin is not None and not (0 <= self.margin <= self.latency_threshold):
            raise UserError("gate rules: need 0 <= margin <= latency_threshold")
        if self.min_samples < 1 or self.max_noise <= 0:
            raise UserError("gate rules: need min_samples >= 1 and max_noise > 0")
        for name in ("latency", "memory", "missing", "not_gated", "inconclusive"):
            if getattr(self, name) not in MODES:
                raise UserError(f"gate rules: {name} must be 'gate' or 'report', got {getattr(self, name)!r}")

    @property
    def test_margin(self) -> float:
        """The slowdown the significance test must establish (half the threshold by default)."""
        return self.latency_threshold / 2 if self.margin is None else self.margin


@dataclass(frozen=True)
class Config:
    """Default rules plus (pattern, overrides) pairs; later patterns win. Patterns are shell-style
    globs over the case label `<suite>-<model>-<device>-b<batch>[-<optimizer>-<strategy>|-<mode>]`."""

    default: Rules = field(default_factory=Rules)
    overrides: tuple[tuple[str, Mapping[str, Any]], ...] = ()

    def rules_for(self, label: str) -> Rules:
        rules = self.default
        for pattern, values in self.overrides:
            if fnmatch.fnmatchcase(label, pattern):
                rules = replace(rules, **values)
        return rules


def load_config(pyproject: Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read `[tool.bench_lib.gate]` (keys of `Rules`, plus `[[...rules]]` with a `match` pattern)."""
    table = tool_table(pyproject, "gate")
    patterns = table.pop("rules", [])
    known = set(Rules.__dataclass_fields__)
    unknown = (set(table) | {k for p in patterns for k in p if k != "match"}) - known
    if unknown:
        raise UserError(f"[tool.bench_lib.gate]: unknown settings {sorted(unknown)} (known: {sorted(known)})")
    try:
        default = Rules(**{**table, **(overrides or {})})
    except TypeError as exc:
        raise UserError(f"[tool.bench_lib.gate]: {exc}") from None
    pairs = []
    for p in patterns:
        if "match" not in p:
            raise UserError("[[tool.bench_lib.gate.rules]]: every rule needs a `match` pattern")
        values = {k: v for k, v in p.items() if k != "match"}
        replace(default, **values)  # validate now
        pairs.append((p["match"], values))
    return Config(default, tuple(pairs))


@dataclass(frozen=True)
class Verdict:
    """One metric of one case. `outcome` (cleared, failing, undecided, report-only) decides the
    exit code; `kind` is a short, stable reason for grouping in the summary."""

    case: str
    metric: str
    decision: str
    why: str
    outcome: str
    kind: str = ""
    baseline: float | None = None
    candidate: float | None = None
    change: float | None = None  # candidate / baseline - 1
    p_value: float | None = None
    change_low: float | None = None  # 95% confidence interval of `change` (latency; see `change_interval`)
    change_high: float | None = None

    @property
    def fails(self) -> bool:
        return self.outcome == FAILING

    @property
    def undecided(self) -> bool:
        return self.outcome == UNDECIDED

    def report_only(self, note: str = "report-only") -> Verdict:
        return replace(self, outcome=REPORT_ONLY, why=f"{self.why}; {note}")


@dataclass(frozen=True)
class Side:
    """One side of the gate: the report rows (one per case and report) and per-unit medians."""

    frame: pd.DataFrame
    process_medians: dict[tuple, list[float]]
    files: tuple[str, ...]


UNITS = ("run", "process")


def load_side(paths: Sequence[str | Path], unit: str = "run") -> Side:
    """Read one side's reports and their raw samples (`UserError` on bad input).

    `unit` is what counts as one independent sample of latency: the median of each `run` (a
    report; give several per side, e.g. from `make bench` repeated) or of each worker `process`.
    Runs are the honest unit: a run's workers fork from one server and share its memory layout, so
    two runs can differ by more than their processes do.
    """
    if unit not in UNITS:
        raise UserError(f"unknown unit {unit!r} (known: {', '.join(UNITS)})")
    if not paths:
        raise UserError("gate needs at least one report per side")
    frames: list[pd.DataFrame] = []
    medians: dict[tuple[str, ...], list[float]] = {}
    for path in paths:
        frame = read_report(path)
        frames.append(frame)
        samples = samples_path(Path(path))
        if not samples.is_file():
            continue
        raw = read_samples(samples, frame)
        by = [*KEY_FIELDS, "run_id"] + (["process"] if unit == "process" else [])
        for key, group in raw.groupby(by, sort=False):
            median = float(np.median(group["latency_ms"]))
            if median <= 0:
                raise UserError(f"{samples}: zero median latency for {_label(key[: len(KEY_FIELDS)])}")
            medians.setdefault(tuple(str(k) for k in key[: len(KEY_FIELDS)]), []).append(median)
    return Side(pd.concat(frames, ignore_index=True), medians, tuple(str(p) for p in paths))


def read_samples(path: Path, report: pd.DataFrame) -> pd.DataFrame:
    """A report's raw samples, validated against it: numeric, finite, non-negative latencies,
    whole process numbers, and only runs that the report has."""
    needed = {*KEY_FIELDS, "run_id", "process", "latency_ms"} - {"compile"}  # compile: from schema 3

    def identify(raw: pd.DataFrame) -> None:  # before the line-end check: not a samples file at all
        if not needed <= set(raw.columns):
            raise UserError(f"{path}: missing columns {sorted(needed - set(raw.columns))}")

    raw = read_csv_strict(path, "samples file", identify=identify)
    if "compile" not in raw:  # samples written before schema 3
        raw["compile"] = ""
    latency = pd.to_numeric(raw["latency_ms"], errors="coerce")
    bad = raw.index[latency.isna() | ~np.isfinite(latency.fillna(0)) | (latency < 0)]
    if len(bad):
        raise UserError(
            f"{path}: latency_ms must be a finite number >= 0; row {bad[0] + 1} has {raw.loc[bad[0], 'latency_ms']!r}"
        )
    process = pd.to_numeric(raw["process"], errors="coerce")
    if process.isna().any() or (process < 0).any() or (process % 1 != 0).any():
        raise UserError(f"{path}: process must be a whole number >= 0")
    batch = pd.to_numeric(raw["batch_size"], errors="coerce")
    if batch.isna().any():
        raise UserError(f"{path}: batch_size must be a whole number")
    raw = raw.assign(
        latency_ms=latency.astype(float), process=process.astype(int), batch_size=batch.astype(int)
    )
    runs = set(report["run_id"].dropna().astype(str)) if "run_id" in report else set()
    unknown = sorted(set(raw["run_id"]) - runs)
    if unknown:
        raise UserError(f"{path}: samples of run {unknown[0]!r}, which the report does not have")
    # Samples of a case the report does not list (a row deleted by hand) are not gated.
    keys = pd.MultiIndex.from_tuples([_key(r) for r in report[list(KEY_FIELDS)].to_dict("records")])
    listed = pd.MultiIndex.from_frame(raw[list(KEY_FIELDS)].astype(str)).isin(keys)  # vectorized: big runs
    return raw[listed]


def _key(row: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple("" if pd.isna(row[k]) else str(row[k]) for k in KEY_FIELDS)


def _label(key: tuple) -> str:
    return Case.from_row(dict(zip(KEY_FIELDS, key, strict=True))).label


def _fingerprint(frame: pd.DataFrame) -> dict[str, set[str]]:
    return {c: set(frame[c].astype(str)) if c in frame else set() for c in FINGERPRINT}


def memory_build(row: Mapping[str, Any]) -> str:
    """What must match for a row's byte counts to be comparable: the torch release on the CPU
    (`2.13.0` and `2.13.0+cpu` alike), the full torch, CUDA and cuDNN versions on CUDA."""
    version = "" if pd.isna(row.get("torch_version")) else str(row.get("torch_version"))
    if row.get("device") != "cuda":
        return f"torch {version.split('+')[0]}"
    parts = [f"torch {version}"]
    for column, name in (("cuda_version", "CUDA"), ("cudnn_version", "cuDNN")):
        value = row.get(column)
        parts.append(f"{name} {'?' if value is None or pd.isna(value) else value}")
    return ", ".join(parts)


def _builds(rows: pd.DataFrame) -> set[str]:
    return {memory_build(r) for r in rows.to_dict("records")}


def gate(baseline: Side, candidate: Side, config: Config) -> list[Verdict]:
    """Every verdict: each case of the baseline (and each new case of the candidate)."""
    by_case = {}
    for name, side in (("baseline", baseline), ("candidate", candidate)):
        groups = {_key(dict(zip(KEY_FIELDS, k, strict=True))): g for k, g in
                  side.frame.groupby(list(KEY_FIELDS), sort=False, dropna=False)}  # fmt: skip
        by_case[name] = groups
    base_cases, cand_cases = by_case["baseline"], by_case["candidate"]
    if not set(base_cases) & set(cand_cases):
        raise UserError("baseline and candidate have no case in common: are these reports of the same suite?")
    fb, fc = _fingerprint(baseline.frame), _fingerprint(candidate.frame)
    latency_reason = next(
        (
            f"{c} differs ({', '.join(sorted(fb[c]))} vs {', '.join(sorted(fc[c]))})"
            for c in FINGERPRINT
            if fb[c] != fc[c] or len(fb[c]) != 1
        ),
        None,
    )
    verdicts: list[Verdict] = []
    for key in list(base_cases) + [k for k in cand_cases if k not in base_cases]:
        label = _label(key)
        rules = config.rules_for(label)
        b, c = base_cases.get(key), cand_cases.get(key)
        verdict = _presence(label, b, c, rules)
        if verdict is not None:
            verdicts.append(verdict)
            continue
        assert b is not None and c is not None
        b, c = b[b["status"] == "ok"], c[c["status"] == "ok"]
        verdicts += _memory_verdicts(label, b, c, rules)
        v = _latency(
            label, baseline.process_medians.get(key, []), candidate.process_medians.get(key, []), rules
        )
        if not baseline.process_medians.get(key) or not candidate.process_medians.get(key):
            v = _without_samples(v, b, c, rules)
        if latency_reason is not None:
            v = _settle(replace(v, decision=NOT_GATED, outcome=UNDECIDED, kind="machines differ",
                                why=f"machines differ: {latency_reason}"), rules)  # fmt: skip
        if rules.latency != "gate":
            v = v.report_only()
        verdicts.append(v)
    return verdicts


def _statuses(rows: pd.DataFrame | None) -> set[str]:
    return set() if rows is None else set(rows["status"].astype(str))


def _presence(label: str, b: pd.DataFrame | None, c: pd.DataFrame | None, rules: Rules) -> Verdict | None:
    """The case-level verdict when a case is absent or did not succeed on a side; None when both
    sides have successful runs of it (then its metrics are gated)."""
    sb, sc = _statuses(b), _statuses(c)
    base_ok, cand_ok = sb == {"ok"}, sc == {"ok"}
    if base_ok and cand_ok:
        return None
    if b is None:
        return Verdict(
            label, CASE, NEW, "only in the candidate: no baseline to gate against", REPORT_ONLY, "new"
        )
    if c is None:
        if not base_ok:  # nothing that worked was lost
            why = f"absent from the candidate ({'/'.join(sorted(sb))} in the baseline)"
            return Verdict(label, CASE, MISSING, why, CLEARED, "gone, not ok before")
        v = Verdict(label, CASE, MISSING, "ok in the baseline, absent from the candidate", FAILING, "missing")
        return v.report_only("missing = report") if rules.missing == "report" else v
    if base_ok:  # the candidate failed, ran out of memory, or failed in some of its runs
        errors = sorted(set(c.loc[c["status"] != "ok", "error"].astype(str)))
        bad = "/".join(sorted(sc - {"ok"}))
        why = f"ok in the baseline, {bad} in the candidate" + (f": {errors[0]}" if errors else "")
        return Verdict(label, CASE, BROKEN, why, FAILING, "broken")
    if sb == sc:
        return Verdict(
            label,
            CASE,
            PASS,
            f"{'/'.join(sorted(sb))} in both: nothing to compare",
            CLEARED,
            "not ok in both",
        )
    if cand_ok:
        return Verdict(
            label,
            CASE,
            IMPROVED,
            f"{'/'.join(sorted(sb - {'ok'}))} in the baseline, ok now",
            CLEARED,
            "fixed",
        )
    why = f"status {'/'.join(sorted(sb))} in the baseline, {'/'.join(sorted(sc))} in the candidate"
    return Verdict(label, CASE, INCONCLUSIVE, why, UNDECIDED, "unstable status")


def _settle(v: Verdict, rules: Rules) -> Verdict:
    """Apply the `not_gated` / `inconclusive` report-only downgrades to an undecided verdict."""
    if v.outcome != UNDECIDED:
        return v
    if v.decision == NOT_GATED and rules.not_gated == "report":
        return v.report_only("not_gated = report")
    if v.decision == INCONCLUSIVE and rules.inconclusive == "report":
        return v.report_only("inconclusive = report")
    return v


def _memory_verdicts(label: str, b: pd.DataFrame, c: pd.DataFrame, rules: Rules) -> list[Verdict]:
    builds_b, builds_c = _builds(b), _builds(c)
    reason = None
    if builds_b != builds_c or len(builds_b) != 1:
        reason = f"byte counts of different builds ({'; '.join(sorted(builds_b))} vs {'; '.join(sorted(builds_c))})"
    varies = sorted(
        {str(x) for x in pd.concat([b, c]).get("mem_disagreement", pd.Series(dtype=str)).dropna() if str(x)}
    )
    out = []
    for metric in MEMORY_METRICS:
        if metric not in b or not (b[metric].notna().any() and c[metric].notna().any()):
            continue
        v = _memory(label, metric, b[metric].dropna(), c[metric].dropna(), rules)
        if reason is not None:
            v = replace(v, decision=NOT_GATED, outcome=UNDECIDED, kind="torch builds differ",
                        why=f"{v.why}; not gated: {reason}")  # fmt: skip
        elif varies:
            v = replace(v, decision=INCONCLUSIVE, outcome=UNDECIDED, kind="memory differs between processes",
                        why=f"differs between worker processes of one run: {varies[0]}")  # fmt: skip
        v = _settle(v, rules)
        out.append(v.report_only() if rules.memory != "gate" else v)
    return out


def _memory(label: str, metric: str, base: pd.Series, cand: pd.Series, rules: Rules) -> Verdict:
    if base.nunique() > 1 or cand.nunique() > 1:
        return Verdict(label, metric, INCONCLUSIVE, "differs between the reports of one side: not deterministic",
                       UNDECIDED, "memory differs between runs")  # fmt: skip
    b, c = int(base.iloc[0]), int(cand.iloc[0])
    change = (c / b - 1) if b else None
    if c > b + rules.memory_slack_bytes:
        return Verdict(label, metric, REGRESSION, f"+{c - b} bytes", FAILING, "memory grew", b, c, change)
    if c < b - rules.memory_slack_bytes:
        return Verdict(label, metric, IMPROVED, f"{c - b} bytes: update the baseline", FAILING,
                       "memory shrank (update the baseline)", b, c, change)  # fmt: skip
    why = "equal" if b == c else f"within {rules.memory_slack_bytes} bytes"
    return Verdict(label, metric, PASS, why, CLEARED, "", b, c, change)


def min_p_value(n: int, m: int) -> float:
    """The smallest one-sided p a Mann-Whitney U test can give with n and m samples: 1 / C(n+m, n)."""
    return 1.0 / math.comb(n + m, n)


def _undecided_unless_within(v: Verdict, rules: Rules) -> Verdict:
    """An inconclusive latency test: cleared when the observed change is within the threshold
    (counted apart), undecided when it is beyond it or unknown."""
    if v.change is not None and v.change <= rules.latency_threshold:
        return replace(
            v, outcome=CLEARED, why=f"{v.why}; {v.change:+.1%} is within {rules.latency_threshold:.0%}"
        )
    return _settle(replace(v, outcome=UNDECIDED), rules)


def _latency(label: str, base: list[float], cand: list[float], rules: Rules) -> Verdict:
    metric = LATENCY
    if not base or not cand:
        return _settle(Verdict(label, metric, INCONCLUSIVE, "no raw samples on one side", UNDECIDED,
                               "no raw samples"), rules)  # fmt: skip
    b, c = float(np.median(base)), float(np.median(cand))
    change = c / b - 1
    low, high = change_interval(base, cand)
    if low is not None and high is not None:  # around the mean log change; shown with the median's
        low, high = min(low, change), max(high, change)
    common = dict(baseline=b, candidate=c, change=change, change_low=low, change_high=high)
    n, m = len(base), len(cand)
    if min(n, m) < rules.min_samples or min_p_value(n, m) >= rules.alpha:
        why = f"too few runs ({n} vs {m}) to reach p < {rules.alpha}"
        return _undecided_unless_within(Verdict(label, metric, INCONCLUSIVE, why, UNDECIDED, "too few runs",
                                                **common), rules)  # fmt: skip
    noise = max(_spread(base), _spread(cand))
    if noise > rules.max_noise:
        why = f"medians spread {noise:.0%} (> {rules.max_noise:.0%})"
        return _undecided_unless_within(Verdict(label, metric, INCONCLUSIVE, why, UNDECIDED, "too noisy",
                                                **common), rules)  # fmt: skip
    margin = rules.test_margin
    from scipy.stats import mannwhitneyu  # here: ~1 s to import, the history commands need none

    slower = mannwhitneyu(cand, [x * (1 + margin) for x in base], alternative="greater").pvalue
    faster = mannwhitneyu(cand, [x * (1 - margin) for x in base], alternative="less").pvalue
    if change > rules.latency_threshold:
        if slower < rules.alpha:
            why = (
                f"{change:+.1%} > {rules.latency_threshold:.0%}, slower than +{margin:.0%} at p={slower:.2g}"
            )
            return Verdict(
                label, metric, REGRESSION, why, FAILING, "latency regression", p_value=slower, **common
            )
        why = f"{change:+.1%} observed, but not established beyond +{margin:.0%} (p={slower:.2g} >= {rules.alpha})"
        return _settle(Verdict(label, metric, INCONCLUSIVE, why, UNDECIDED, "slowdown not established",
                               p_value=slower, **common), rules)  # fmt: skip
    if change < -rules.latency_threshold and faster < rules.alpha:
        return Verdict(label, metric, IMPROVED, f"{change:+.1%}, p={faster:.2g}", CLEARED, "faster",
                       p_value=faster, **common)  # fmt: skip
    why = f"{change:+.1%} within {rules.latency_threshold:.0%}"
    return Verdict(label, metric, PASS, why, CLEARED, "", p_value=slower, **common)


def _without_samples(v: Verdict, b: pd.DataFrame, c: pd.DataFrame, rules: Rules) -> Verdict:
    """No raw samples on a side: the reports' medians still show the change, and a change within
    the threshold clears like any other inconclusive test."""
    mb, mc = b[LATENCY].dropna(), c[LATENCY].dropna()
    if mb.empty or mc.empty:
        return v
    base, cand = float(mb.median()), float(mc.median())
    v = replace(v, baseline=base, candidate=cand, change=cand / base - 1 if base > 0 else None)
    return _undecided_unless_within(v, rules)


def change_interval(base: Sequence[float], cand: Sequence[float]) -> tuple[float | None, float | None]:
    """95% confidence interval of the change (candidate / baseline - 1) from the per-unit medians
    of each side: Welch's t-interval on the difference of mean log medians, exponentiated. For
    the reader only: the decision stays with the threshold and the Mann-Whitney test, whose
    false-alarm rate the gate audit measures. (None, None) with fewer than two units a side."""
    if len(base) < 2 or len(cand) < 2:
        return None, None
    from scipy.stats import t

    lb, lc = np.log(base), np.log(cand)
    vb, vc = np.var(lb, ddof=1) / len(lb), np.var(lc, ddof=1) / len(lc)
    se = math.sqrt(vb + vc)
    diff = float(np.mean(lc) - np.mean(lb))
    if se == 0:
        return math.expm1(diff), math.expm1(diff)
    dof = (vb + vc) ** 2 / (vb**2 / (len(lb) - 1) + vc**2 / (len(lc) - 1))
    h = float(t.ppf(0.975, dof)) * se
    return math.expm1(diff - h), math.expm1(diff + h)


def _spread(values: list[float]) -> float:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float((q75 - q25) / q50) if q50 > 0 else 0.0


def exit_code(verdicts: Sequence[Verdict]) -> int:
    """1 when a verdict fails, else 3 when one is undecided, else 0."""
    if any(v.fails for v in verdicts):
        return EXIT_FAIL
    if any(v.undecided for v in verdicts):
        return EXIT_UNDECIDED
    return EXIT_OK


ORDER = {FAILING: 0, UNDECIDED: 1, REPORT_ONLY: 2, CLEARED: 3}


def table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    frame = pd.DataFrame([asdict(v) for v in verdicts])
    return frame.sort_values("outcome", key=lambda s: s.map(ORDER), kind="stable").reset_index(drop=True)


def _shown(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    frame = table(verdicts)
    frame["change"] = [_change_text(v) for v in frame.itertuples()]
    for col in ("baseline", "candidate"):
        frame[col] = frame[col].map(lambda x: "" if x is None or pd.isna(x) else f"{x:.6g}")
    return frame[["case", "metric", "baseline", "candidate", "change", "decision", "outcome", "why"]]


def _missing(x: object) -> bool:
    return x is None or bool(pd.isna(x))


def _change_text(v: Any) -> str:
    """`+12.30%`, with its interval where there is one: `+12.30% [+8.1%, +16.6%]`."""
    if _missing(v.change):
        return ""
    if _missing(v.change_low) or _missing(v.change_high):
        return f"{v.change:+.2%}"
    return f"{v.change:+.2%} [{v.change_low:+.1%}, {v.change_high:+.1%}]"


def _counted(verdicts: Sequence[Verdict]) -> str:
    counts = Counter(v.kind or v.decision for v in verdicts)
    return ", ".join(f"{n} {kind}" for kind, n in counts.most_common())


def summary_line(verdicts: Sequence[Verdict]) -> str:
    """The last line: which of the four exit codes, why, and the counts behind it."""
    by = {o: [v for v in verdicts if v.outcome == o] for o in ORDER}
    cleared = by[CLEARED]
    soft = sum(v.decision == INCONCLUSIVE for v in cleared)
    tail = f"{len(cleared)} cleared" + (
        f" ({soft} of them inconclusive within the threshold)" if soft else ""
    )
    if by[REPORT_ONLY]:
        tail += f", {len(by[REPORT_ONLY])} report-only"
    code = exit_code(verdicts)
    if code == EXIT_FAIL:
        undecided = f"; {len(by[UNDECIDED])} undecided" if by[UNDECIDED] else ""
        return f"gate: FAIL (exit 1): {len(by[FAILING])} failing [{_counted(by[FAILING])}]{undecided}; {tail}"
    if code == EXIT_UNDECIDED:
        return (
            f"gate: UNDECIDED (exit 3): nothing failed, but {len(by[UNDECIDED])} verdict(s) could not be "
            f"decided [{_counted(by[UNDECIDED])}]; {tail}"
        )
    if not cleared:
        return f"gate: OK (exit 0): nothing gated; {tail}"
    return f"gate: OK (exit 0): every gated verdict cleared; {tail}"


def render_console(verdicts: Sequence[Verdict], only_notable: bool = True) -> str:
    shown = _shown(verdicts)
    if only_notable:
        shown = shown[(shown["outcome"] != CLEARED) | (shown["decision"] != PASS)]
    body = shown.to_string(index=False) if not shown.empty else "(every verdict passed)"
    return f"{body}\n{summary_line(verdicts)}"


def render_markdown(verdicts: Sequence[Verdict]) -> str:
    shown = _shown(verdicts)
    notable = shown[(shown["outcome"] != CLEARED) | (shown["decision"] != PASS)]
    parts = ["# bench_lib gate", "", f"**{summary_line(verdicts)}**", ""]
    parts.append(
        notable.to_markdown(index=False, disable_numparse=True)
        if not notable.empty
        else "Every verdict passed."
    )
    return "\n".join(parts) + "\n"


def render_json(verdicts: Sequence[Verdict]) -> str:
    return json.dumps(
        {
            "exit_code": exit_code(verdicts),
            "summary": summary_line(verdicts),
            "verdicts": [asdict(v) for v in verdicts],
        },
        indent=2,
    )
