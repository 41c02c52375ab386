"""The regression gate: a baseline and a candidate (each one or more reports), a verdict per case.

How it decides (see ../shared/MEASURING.md, "Regression gates"):
- Memory figures are deterministic byte counts: compared exactly, with a small configurable slack,
  in both directions. A decrease is `improved` and fails the gate too, so that the baseline is
  updated rather than the improvement passing silently. Gated only between reports of the same
  torch version.
- Latency: the unit is the median of one run (a report; several per side), or of one worker
  process with `unit="process"`. A case is a `regression` only when the candidate's median is slower than the
  baseline's by more than the threshold AND a one-sided Mann-Whitney U test says, at level `alpha`,
  that the candidate's medians are slower than the baseline's scaled by 1 + `margin` (half the
  threshold by default): the slowdown must be both large and, with confidence, more than noise
  (with margin 0, a full-suite A/A audit flagged a +14% training step whose runs drifted together). Gated only between reports whose machine fingerprints (and
  thread and malloc settings) match; otherwise `not gated`, with the reason.
- Too few samples to ever reach `alpha`, or medians spread wider than `max_noise`:
  `inconclusive`, never a silent pass or fail.
"""

from __future__ import annotations

import fnmatch
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from bench_lib.cases import KEY_FIELDS, Case
from bench_lib.errors import UserError
from bench_lib.schema import read_report, samples_path

PASS, REGRESSION, IMPROVED, INCONCLUSIVE, NOT_GATED, MISSING = (
    "pass",
    "regression",
    "improved",
    "inconclusive",
    "not gated",
    "missing",
)
FAILING = (REGRESSION, IMPROVED)
MEMORY_METRICS = (
    "mem_peak_bytes",
    "mem_saved_for_backward_bytes",
    "mem_params_bytes",
    "mem_grads_bytes",
    "mem_optimizer_state_bytes",
    "mem_activations_bytes",
)
LATENCY = "latency_ms_median"
# What must match for latency to be comparable at all.
FINGERPRINT = ("machine_id", "torch_threads", "cpu_malloc")


@dataclass(frozen=True)
class Rules:
    """Decision settings for the cases a pattern matches (defaults for all).

    `latency` and `memory` are "gate" or "report" (report-only: the verdict is shown, never fails).
    """

    latency_threshold: float = 0.10
    alpha: float = 0.01
    min_samples: int = 4
    max_noise: float = 0.10
    margin: float | None = None  # the slowdown the test must establish; None: latency_threshold / 2
    memory_slack_bytes: int = 0
    latency: str = "gate"
    memory: str = "gate"

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 1) or self.latency_threshold < 0 or self.memory_slack_bytes < 0:
            raise UserError("gate rules: need 0 < alpha < 1, latency_threshold >= 0, memory_slack_bytes >= 0")
        if self.margin is not None and not (0 <= self.margin <= self.latency_threshold):
            raise UserError("gate rules: need 0 <= margin <= latency_threshold")
        for name in ("latency", "memory"):
            if getattr(self, name) not in ("gate", "report"):
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
    table: dict[str, Any] = {}
    if pyproject is not None and pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{pyproject}: not valid TOML ({exc})") from None
        table = dict(data.get("tool", {}).get("bench_lib", {}).get("gate", {}))
    patterns = table.pop("rules", [])
    known = set(Rules.__dataclass_fields__)
    unknown = (set(table) | {k for p in patterns for k in p if k != "match"}) - known
    if unknown:
        raise UserError(f"[tool.bench_lib.gate]: unknown settings {sorted(unknown)} (known: {sorted(known)})")
    default = Rules(**{**table, **(overrides or {})})
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
    case: str
    metric: str
    decision: str
    why: str
    baseline: float | None = None
    candidate: float | None = None
    change: float | None = None  # candidate / baseline - 1
    p_value: float | None = None
    gated: bool = True

    @property
    def fails(self) -> bool:
        return self.gated and self.decision in FAILING


@dataclass(frozen=True)
class Side:
    """One side of the gate: the report rows (one per case and report) and per-process medians."""

    frame: pd.DataFrame
    process_medians: dict[tuple, list[float]]
    files: tuple[str, ...]


UNITS = ("run", "process")


def load_side(paths: Sequence[str | Path], unit: str = "run") -> Side:
    """Read one side's reports and their raw samples (`UserError` on bad input).

    `unit` is what counts as one independent sample of latency: the median of each `run` (a
    report; give several per side, e.g. from `make bench` repeated) or of each worker `process`.
    Runs are the honest unit: a run's workers fork from one server and share its memory layout, so
    two runs can differ by more than their processes do (seen: the MLP's batch-1 training step
    moved 10-17% between two runs whose processes agreed within 3%).
    """
    if unit not in UNITS:
        raise UserError(f"unknown unit {unit!r} (known: {', '.join(UNITS)})")
    if not paths:
        raise UserError("gate needs at least one report per side")
    frames, medians = [], {}
    for path in paths:
        frame = read_report(path)
        frames.append(frame)
        samples = samples_path(Path(path))
        if not samples.is_file():
            continue
        try:
            raw = pd.read_csv(samples, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            raise UserError(f"{samples}: not a samples file") from None
        if "compile" not in raw:  # samples written before schema 3
            raw["compile"] = ""
        needed = {*KEY_FIELDS, "run_id", "process", "latency_ms"}
        if not needed <= set(raw.columns):
            raise UserError(f"{samples}: missing columns {sorted(needed - set(raw.columns))}")
        raw["batch_size"] = raw["batch_size"].astype(int)
        by = [*KEY_FIELDS, "run_id"] + (["process"] if unit == "process" else [])
        for key, group in raw.groupby(by, sort=False):
            medians.setdefault(tuple(str(k) for k in key[: len(KEY_FIELDS)]), []).append(
                float(np.median(group["latency_ms"]))
            )
    return Side(pd.concat(frames, ignore_index=True), medians, tuple(str(p) for p in paths))


def _label(key: tuple) -> str:
    return Case.from_row(dict(zip(KEY_FIELDS, key, strict=True))).label


def _fingerprint(frame: pd.DataFrame) -> dict[str, set[str]]:
    return {c: set(frame[c].astype(str)) if c in frame else set() for c in (*FINGERPRINT, "torch_version")}


def gate(baseline: Side, candidate: Side, config: Config) -> list[Verdict]:
    """Every verdict: each memory metric and the latency of every case on either side."""
    base_ok = baseline.frame[baseline.frame["status"] == "ok"]
    cand_ok = candidate.frame[candidate.frame["status"] == "ok"]
    keyed_base = {tuple(str(v) for v in k): g for k, g in base_ok.groupby(list(KEY_FIELDS), sort=False)}
    keyed_cand = {tuple(str(v) for v in k): g for k, g in cand_ok.groupby(list(KEY_FIELDS), sort=False)}
    if not set(keyed_base) & set(keyed_cand):
        raise UserError("baseline and candidate have no successful case in common")
    fb, fc = _fingerprint(baseline.frame), _fingerprint(candidate.frame)
    latency_reason = next(
        (
            f"{c} differs ({', '.join(sorted(fb[c]))} vs {', '.join(sorted(fc[c]))})"
            for c in FINGERPRINT
            if fb[c] != fc[c] or len(fb[c]) != 1
        ),
        None,
    )
    memory_reason = None if fb["torch_version"] == fc["torch_version"] else "torch version differs"
    verdicts = []
    for key in list(keyed_base) + [k for k in keyed_cand if k not in keyed_base]:
        label = _label(key)
        if key not in keyed_cand or key not in keyed_base:
            side = "candidate" if key not in keyed_cand else "baseline"
            verdicts.append(Verdict(label, "case", MISSING, f"no successful run in the {side}", gated=False))
            continue
        rules = config.rules_for(label)
        b, c = keyed_base[key], keyed_cand[key]
        for metric in MEMORY_METRICS:
            if metric in b and b[metric].notna().any() and c[metric].notna().any():
                v = _memory(label, metric, b[metric].dropna(), c[metric].dropna(), rules)
                if memory_reason is not None:
                    v = replace(
                        v, decision=NOT_GATED, why=f"{v.why}; not gated: {memory_reason}", gated=False
                    )
                elif rules.memory != "gate":
                    v = replace(v, why=f"{v.why}; report-only", gated=False)
                verdicts.append(v)
        v = _latency(
            label, baseline.process_medians.get(key, []), candidate.process_medians.get(key, []), rules
        )
        if latency_reason is not None:
            v = replace(v, decision=NOT_GATED, why=f"machines differ: {latency_reason}", gated=False)
        elif rules.latency != "gate":
            v = replace(v, gated=False, why=f"{v.why}; report-only")
        verdicts.append(v)
    return verdicts


def _memory(label: str, metric: str, base: pd.Series, cand: pd.Series, rules: Rules) -> Verdict:
    if base.nunique() > 1 or cand.nunique() > 1:
        return Verdict(
            label, metric, INCONCLUSIVE, "differs between the reports of one side: not deterministic"
        )
    b, c = int(base.iloc[0]), int(cand.iloc[0])
    change = (c / b - 1) if b else None
    if c > b + rules.memory_slack_bytes:
        return Verdict(label, metric, REGRESSION, f"+{c - b} bytes", b, c, change)
    if c < b - rules.memory_slack_bytes:
        return Verdict(label, metric, IMPROVED, f"{c - b} bytes: update the baseline", b, c, change)
    return Verdict(
        label, metric, PASS, "equal" if b == c else f"within {rules.memory_slack_bytes} bytes", b, c, change
    )


def min_p_value(n: int, m: int) -> float:
    """The smallest one-sided p a Mann-Whitney U test can give with n and m samples: 1 / C(n+m, n)."""
    return 1.0 / math.comb(n + m, n)


def _latency(label: str, base: list[float], cand: list[float], rules: Rules) -> Verdict:
    metric = LATENCY
    if not base or not cand:
        return Verdict(label, metric, INCONCLUSIVE, "no raw samples on one side")
    b, c = float(np.median(base)), float(np.median(cand))
    change = c / b - 1
    common = dict(baseline=b, candidate=c, change=change)
    n, m = len(base), len(cand)
    if min(n, m) < rules.min_samples or min_p_value(n, m) >= rules.alpha:
        return Verdict(
            label,
            metric,
            INCONCLUSIVE,
            f"too few samples ({n} vs {m}) to reach p < {rules.alpha}",
            **common,
        )
    noise = max(_spread(base), _spread(cand))
    if noise > rules.max_noise:
        return Verdict(
            label,
            metric,
            INCONCLUSIVE,
            f"medians spread {noise:.0%} (> {rules.max_noise:.0%})",
            **common,
        )
    margin = rules.test_margin
    slower = mannwhitneyu(cand, [x * (1 + margin) for x in base], alternative="greater").pvalue
    faster = mannwhitneyu(cand, [x * (1 - margin) for x in base], alternative="less").pvalue
    if change > rules.latency_threshold:
        if slower < rules.alpha:
            return Verdict(
                label,
                metric,
                REGRESSION,
                f"{change:+.1%} > {rules.latency_threshold:.0%}, slower than +{margin:.0%} at p={slower:.2g}",
                p_value=slower,
                **common,
            )
        return Verdict(
            label,
            metric,
            PASS,
            f"{change:+.1%} but not significantly beyond +{margin:.0%} (p={slower:.2g})",
            p_value=slower,
            **common,
        )
    if change < -rules.latency_threshold and faster < rules.alpha:
        return Verdict(
            label, metric, IMPROVED, f"{change:+.1%}, p={faster:.2g}", p_value=faster, gated=False, **common
        )
    return Verdict(
        label, metric, PASS, f"{change:+.1%} within {rules.latency_threshold:.0%}", p_value=slower, **common
    )


def _spread(values: list[float]) -> float:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float((q75 - q25) / q50) if q50 > 0 else 0.0


def exit_code(verdicts: Sequence[Verdict]) -> int:
    return 1 if any(v.fails for v in verdicts) else 0


def table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    frame = pd.DataFrame([asdict(v) for v in verdicts])
    order = {REGRESSION: 0, IMPROVED: 1, INCONCLUSIVE: 2, MISSING: 3, NOT_GATED: 4, PASS: 5}
    return frame.sort_values("decision", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def _shown(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    frame = table(verdicts)
    frame["change"] = frame["change"].map(lambda x: "" if x is None or pd.isna(x) else f"{x:+.2%}")
    for col in ("baseline", "candidate"):
        frame[col] = frame[col].map(lambda x: "" if x is None or pd.isna(x) else f"{x:.6g}")
    return frame[["case", "metric", "baseline", "candidate", "change", "decision", "why"]]


def summary_line(verdicts: Sequence[Verdict]) -> str:
    counts = pd.Series([v.decision for v in verdicts]).value_counts().to_dict()
    failing = sum(v.fails for v in verdicts)
    text = ", ".join(f"{n} {d}" for d, n in counts.items())
    return f"{'FAIL' if failing else 'OK'}: {failing} failing verdict(s); {text}"


def render_console(verdicts: Sequence[Verdict], only_notable: bool = True) -> str:
    shown = _shown(verdicts)
    if only_notable:
        shown = shown[shown["decision"] != PASS]
    body = shown.to_string(index=False) if not shown.empty else "(every verdict passed)"
    return f"{body}\n{summary_line(verdicts)}"


def render_markdown(verdicts: Sequence[Verdict]) -> str:
    shown = _shown(verdicts)
    notable = shown[shown["decision"] != PASS]
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
