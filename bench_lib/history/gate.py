"""`history gate CANDIDATE`: a candidate against the last N runs of its machine fingerprint on a
branch, with no need to measure the base again. Verdicts, outcomes and exit codes are those of
`bench_lib.gate` (0 cleared, 1 regression, 2 bad input, 3 undecided), and so are the rules
(`[tool.bench_lib.gate]`); `bench_lib.gate.gate` decides with the history as the baseline side:

- presence and memory against the newest of those runs (exact bytes: older runs may predate an
  intended change, and a change must not hold the gate for N runs);
- latency against the per-run medians of all N. Those runs were not measured beside the
  candidate, so the test is one of prediction, not the gate's Mann-Whitney U (which cannot reach
  p < 0.01 with one candidate run): with m candidate runs and the history's mean and standard
  deviation s of log medians, t = (mean log candidate - mean log history - log(1 + margin)) /
  (s * sqrt(1/m + 1/N)), one-sided, Student's t with N - 1 degrees of freedom. The history's
  spread includes the drift between runs of different days, which is what a candidate measured
  on another day must beat. A regression needs the median slowdown beyond `latency_threshold`
  and p < `alpha`; too few history runs (< `min_samples`) or a history spread (IQR / median) over
  `max_noise` leaves a slowdown beyond the threshold undecided, as in the gate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench_lib import gate as ab
from bench_lib.errors import UserError
from bench_lib.history.ingest import fingerprint
from bench_lib.history.store import Store
from bench_lib.records.cases import KEY_FIELDS
from bench_lib.records.schema import COLUMN_NAMES, SCHEMA_VERSION, to_frame

DEFAULT_LAST = 20


@dataclass(frozen=True)
class History:
    """The baseline drawn from the store, and what it was drawn from."""

    side: ab.Side
    fingerprint: str
    branch: str
    run_ids: tuple[str, ...]  # oldest first; the last one is the memory and presence baseline


def candidate_fingerprint(side: ab.Side) -> str:
    frame = side.frame
    values = {c: set(frame[c].dropna().astype(str)) if c in frame else set() for c in ab.FINGERPRINT}
    mixed = [c for c, v in values.items() if len(v) != 1]
    if mixed:
        raise UserError(
            f"the candidate's reports have {len(values[mixed[0]])} values of {mixed[0]}: gate one machine at a time"
        )
    machine, threads, malloc = (next(iter(values[c])) for c in ab.FINGERPRINT)
    return fingerprint(machine, threads, malloc)


def load_history(
    store: Store, fp: str, branch: str, last: int, exclude: Sequence[str] = ()
) -> History | None:
    """The last `last` clean runs of fingerprint `fp` on `branch` (None when there is none)."""
    if last < 1:
        raise UserError(f"--last must be >= 1, got {last}")
    runs = [
        r for r in store.list_runs(fingerprint=fp, branch=branch)
        if not r["dirty"] and r["commit"] and not r["inject"] and r["run_id"] not in exclude
    ][-last:]  # fmt: skip
    if not runs:
        return None
    results = store.results_of([r["id"] for r in runs])
    samples = store.samples_of([r["result"] for r in results])
    medians: dict[tuple, list[float]] = {}
    for r in results:
        if r["status"] != "ok":
            continue
        arrays = [np.frombuffer(lat, dtype="<f8") for lat, _host in samples.get(r["result"], {}).values()]
        if arrays:
            median = float(np.median(np.concatenate(arrays)))
        elif ab.LATENCY in r["figures"]:
            median = r["figures"][ab.LATENCY]
        else:
            continue
        if median > 0:
            medians.setdefault(tuple(str(r[k]) for k in KEY_FIELDS), []).append(median)
    newest = runs[-1]["id"]
    frame = to_frame(_report_row(r) for r in results if r["id"] == newest)
    side = ab.Side(frame, medians, tuple(f"history:{r['run_id']}" for r in runs))
    return History(side, fp, branch, tuple(r["run_id"] for r in runs))


def _report_row(result: dict[str, Any]) -> dict[str, Any]:
    """A stored result as a report row (the columns the gate reads)."""
    # the store keeps "" for a missing text, a report NA
    row = {
        c: (None if result[c] == "" else result[c])
        for c in COLUMN_NAMES
        if c in result and c != "timestamp_utc"
    }
    row |= {k: result[k] for k in KEY_FIELDS}
    row |= {"schema_version": SCHEMA_VERSION, "status": result["status"], "error": result["error"]}
    row |= {k: v for k, v in (result["notes"] or {}).items() if k in COLUMN_NAMES}
    row |= {k: v for k, v in result["figures"].items() if k in COLUMN_NAMES}
    return row


def history_latency(label: str, history: list[float], cand: list[float], rules: ab.Rules) -> ab.Verdict:
    """The latency verdict of one case: the candidate's runs against the history's (see the module
    docstring); decisions, outcomes and wording as `bench_lib.gate`'s."""
    metric = ab.LATENCY
    if not history or not cand:
        return ab._settle(ab.Verdict(label, metric, ab.INCONCLUSIVE, "no raw samples on one side", ab.UNDECIDED,
                                     "no raw samples"), rules)  # fmt: skip
    b, c = float(np.median(history)), float(np.median(cand))
    change = c / b - 1
    common = dict(baseline=b, candidate=c, change=change)
    n, m = len(history), len(cand)
    if n < max(rules.min_samples, 2):
        why = f"too few runs in the history ({n} < {max(rules.min_samples, 2)})"
        return ab._undecided_unless_within(ab.Verdict(label, metric, ab.INCONCLUSIVE, why, ab.UNDECIDED,
                                                      "too few runs", **common), rules)  # fmt: skip
    noise = ab._spread(history)
    if noise > rules.max_noise:
        why = f"history medians spread {noise:.0%} (> {rules.max_noise:.0%})"
        return ab._undecided_unless_within(ab.Verdict(label, metric, ab.INCONCLUSIVE, why, ab.UNDECIDED,
                                                      "too noisy", **common), rules)  # fmt: skip
    logs_h, logs_c = np.log(history), np.log(cand)
    scale = max(float(np.std(logs_h, ddof=1)), 1e-6) * math.sqrt(1 / m + 1 / n)
    margin = rules.test_margin
    diff = float(np.mean(logs_c) - np.mean(logs_h))
    from scipy.stats import t as student_t  # ~1 s to import: only where a gate decides

    slower = float(student_t.sf((diff - math.log1p(margin)) / scale, n - 1))
    faster = float(student_t.cdf((diff - math.log1p(-margin)) / scale, n - 1)) if margin < 1 else 1.0
    if change > rules.latency_threshold:
        if slower < rules.alpha:
            why = f"{change:+.1%} > {rules.latency_threshold:.0%} vs {n} runs, slower than +{margin:.0%} at p={slower:.2g}"
            return ab.Verdict(label, metric, ab.REGRESSION, why, ab.FAILING, "latency regression", p_value=slower,
                              **common)  # fmt: skip
        why = f"{change:+.1%} observed, but not established beyond +{margin:.0%} vs {n} runs (p={slower:.2g} >= {rules.alpha})"
        return ab._settle(ab.Verdict(label, metric, ab.INCONCLUSIVE, why, ab.UNDECIDED, "slowdown not established",
                                     p_value=slower, **common), rules)  # fmt: skip
    if change < -rules.latency_threshold and faster < rules.alpha:
        return ab.Verdict(label, metric, ab.IMPROVED, f"{change:+.1%} vs {n} runs, p={faster:.2g}", ab.CLEARED,
                          "faster", p_value=faster, **common)  # fmt: skip
    why = f"{change:+.1%} within {rules.latency_threshold:.0%} of {n} runs"
    return ab.Verdict(label, metric, ab.PASS, why, ab.CLEARED, "", p_value=slower, **common)


def history_gate(
    history: History | None, candidate: ab.Side, config: ab.Config, fp: str, branch: str
) -> list[ab.Verdict]:
    """Every verdict of the candidate against the history."""
    if history is None:
        why = f"no run of this machine fingerprint [{fp}] on {branch} in the history: nothing to gate against"
        return [ab.Verdict("*", ab.CASE, ab.NOT_GATED, why, ab.UNDECIDED, "no history")]
    verdicts = ab.gate(history.side, candidate, config)
    out = []
    for v in verdicts:
        if v.metric == ab.LATENCY and v.decision != ab.NOT_GATED:
            key = _key_of(v.case, history.side, candidate)
            rules = config.rules_for(v.case)
            v = history_latency(v.case, history.side.process_medians.get(key, []),
                                candidate.process_medians.get(key, []), rules)  # fmt: skip
            if rules.latency != "gate":
                v = v.report_only()
        out.append(v)
    return out


def _key_of(label: str, *sides: ab.Side) -> tuple:
    for side in sides:
        for key in side.process_medians:
            if ab._label(key) == label:
                return key
    return ()


def describe(history: History | None, store: Store) -> str:
    if history is None:
        return f"history: {store.name}: no run to gate against"
    return (
        f"history: {len(history.run_ids)} run(s) of fingerprint {history.fingerprint} on {history.branch} "
        f"({history.run_ids[0]} .. {history.run_ids[-1]}; memory and presence against the newest) in {store.name}"
    )
