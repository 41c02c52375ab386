"""Runs a group of cases in worker processes and pools what they measured."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from bench_lib.measure.worker import run_request
from bench_lib.records.cases import Case
from bench_lib.records.results import FAILED, OOM, CaseResult, describe_error
from bench_lib.records.schema import DETERMINISTIC_MEMORY
from bench_lib.records.stats import Samples

WORKER_TIMEOUT_S = 1800
ERROR_KEY = "__error__"


# Why a group stopped adding worker processes (the `stop_reason` column)
TARGET, BUDGET, MAX_PROCESSES, FIXED, NO_RATIO = "target", "budget", "max_processes", "fixed", "no_ratio"


@dataclass(frozen=True)
class Effort:
    """How many worker processes a group gets.

    With `max_processes` above `processes`, effort is adaptive: after the first `processes`,
    another is added while the widest ratio interval of the group (relative half-width, see
    `stats.Estimate`) is wider than `ci_target` and another process is expected to end within
    `budget_s` seconds of the group's start (0: no budget). Otherwise exactly `processes`.
    """

    processes: int
    max_processes: int = 0
    ci_target: float = 0.0
    budget_s: float = 0.0

    @property
    def adaptive(self) -> bool:
        return self.max_processes > self.processes


# The widest relative half-width of a group's ratio intervals, given its pooled results by
# variant (None when the group has no ratio to aim at, e.g. only its reference ran)
Assess = Callable[[Mapping[str, CaseResult]], float | None]


def run_group(
    request: Mapping[str, Any],
    cases: Mapping[str, Case],
    effort: Effort | int,
    start_method: str = "forkserver",
    assess: Assess | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[dict[str, CaseResult], str, int]:
    """Measure a group in fresh worker processes, one after the other, and pool them; return the
    pooled results by variant, why it stopped adding processes (`Effort`; `assess` judges the
    pooled results after each process once the minimum, and at least two, have run) and how
    many processes ran (0: measured in this process).

    The first process that measures calibrates the calls per round (unless the profile fixes
    them); the following ones reuse its figure, so that their samples pool. Memory is traced by
    the first two processes only (the trace costs time; see `measure.memory_trace`): its
    figures are exact and deterministic, so the two must agree, and `pool` names any difference.
    The same two run the suites' semantic checks (`checks`; deterministic too): a case that fails
    them in either fails in the pooled result (`pool`), and later processes only time.
    0 processes measures in this process instead (for debugging; no isolation). `cases` names
    the group's cases by variant, so a worker that dies can be reported against each of them.
    """
    effort = Effort(effort) if isinstance(effort, int) else effort
    if effort.processes == 0:
        return run_request(request), FIXED, 0
    start = clock()
    parts: list[dict[str, CaseResult]] = []
    durations: list[float] = []
    limit = max(effort.processes, effort.max_processes)
    while True:
        began = clock()
        first_two = len(parts) < 2  # they trace memory and run the suites' semantic checks
        parts.append(_run_worker({**request, "memory": first_two, "checks": first_two}, cases, start_method))
        durations.append(clock() - began)
        request = with_rounds(with_iterations(request, parts[-1]), parts[-1])
        if len(parts) < effort.processes or (effort.adaptive and len(parts) < 2):
            continue  # (one process has no interval yet: adaptive effort judges from two)
        n = len(parts)
        if not effort.adaptive:
            return pool(parts), FIXED, n
        pooled = pool(parts)
        widest = assess(pooled) if assess is not None else None
        if widest is None:
            return pooled, NO_RATIO, n
        if widest <= effort.ci_target:
            return pooled, TARGET, n
        if n >= limit:
            return pooled, MAX_PROCESSES, n
        untraced = durations[2:] or durations  # a traced process takes longer than the next will
        if effort.budget_s and clock() - start + sum(untraced) / len(untraced) > effort.budget_s:
            return pooled, BUDGET, n


def with_iterations(request: Mapping[str, Any], results: Mapping[str, CaseResult]) -> Mapping[str, Any]:
    """`request` with its profile's calls per round fixed to those `results` were measured with
    (unchanged where the profile already fixes them or no result has samples)."""
    measured = next((r.samples.iterations for r in results.values() if r.samples is not None), None)
    if measured is None or request["profile"].get("iterations"):
        return request
    return {**request, "profile": {**request["profile"], "iterations": measured}}


def with_rounds(request: Mapping[str, Any], results: Mapping[str, CaseResult]) -> Mapping[str, Any]:
    """`request` with its rounds per process (`rounds`, `finetune_rounds`) capped so that the
    timed rounds of a process last about the profile's `process_timing_s`, judged from a round
    of the group in `results` (the sum over its variants of median time per call x calls per
    round), but never below `min_rounds`; and its warm-up rounds capped to about a third of
    that time, but at least one (the first process, with the profile's full warm-up, has already
    paid the one-time costs: a batch-32 CNN step's three warm-up rounds took 2 s per process).
    Unchanged without a cap or samples.

    Why: for inference the spread between processes, not within them, limits a ratio's
    precision, so another process gains more than more rounds in this one. Fine-tuning steps
    showed no process effect here (their spread between processes is what their rounds predict,
    README "How precise are the figures"): for them the cap spreads the steps over more
    processes, which is what the interval's degrees of freedom need."""
    profile = request["profile"]
    cap_s = profile.get("process_timing_s") or 0.0
    timed = [r.samples for r in results.values() if r.samples is not None]
    if cap_s <= 0 or not timed:
        return request
    round_ms = sum(s.stats().median * s.iterations for s in timed)
    if round_ms <= 0:
        return request
    fits = max(int(cap_s * 1e3 / round_ms), profile.get("min_rounds") or 1)
    capped = {k: min(profile[k], fits) for k in ("rounds", "finetune_rounds") if k in profile}
    warm = max(int(cap_s * 1e3 / WARMUP_SHARE / round_ms), 1)
    capped |= {k: min(profile[k], warm) for k in ("warmup_rounds", "finetune_warmup_rounds") if k in profile}
    return {**request, "profile": {**profile, **capped}}


# Later processes warm up for about process_timing_s / WARMUP_SHARE (at least one round)
WARMUP_SHARE = 3


START_METHODS = ("forkserver", "spawn")


def _context(method: str) -> Any:
    """How workers start.

    - `forkserver` (default): workers fork from a server process that imported torch and bench_lib
      once and ran nothing, so each starts clean in milliseconds instead of the ~1.5 s of a fresh
      interpreter. The server also imports what torch would import lazily in every worker, and
      freezes the garbage collector's view of it (see `measure.preload`). A forked worker would
      allocate at its siblings' addresses; each shifts its layout at random first
      (`allocator.shuffle_layout`), so that a run's processes vary as different runs' do.
    - `spawn`: a fresh interpreter per worker: fully independent processes, ~1.5 s each.
    Where forkserver is missing (macOS, Windows), spawn.
    """
    if method == "forkserver" and "forkserver" not in multiprocessing.get_all_start_methods():
        method = "spawn"
    if method not in _CONTEXTS:
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["bench_lib.measure.preload"])
        _CONTEXTS[method] = ctx
    return _CONTEXTS[method]


_CONTEXTS: dict[str, Any] = {}  # multiprocessing contexts (typeshed's BaseContext lacks Process)


def _child(request: Mapping[str, Any], conn: Connection) -> None:
    try:
        conn.send({name: r.to_dict() for name, r in run_request(request).items()})
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the group's cases
        conn.send({ERROR_KEY: describe_error(exc)})
    finally:
        conn.close()


def _run_worker(
    request: Mapping[str, Any], cases: Mapping[str, Case], start_method: str
) -> dict[str, CaseResult]:
    ctx = _context(start_method)
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(dict(request), sender), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(WORKER_TIMEOUT_S):
            process.kill()
            return _all_failed(cases, f"worker timed out after {WORKER_TIMEOUT_S} s")
        data = receiver.recv()
    except EOFError:  # the worker died without answering: its exit code says how
        process.join()
        if process.exitcode == -signal.SIGKILL:  # what the kernel's out-of-memory killer sends
            return _all_failed(cases, "worker process killed (SIGKILL), most likely out of memory", OOM)
        return _all_failed(cases, f"worker process died with exit code {process.exitcode}")
    finally:
        receiver.close()
    process.join()
    if ERROR_KEY in data:
        return _all_failed(cases, f"worker failed: {data[ERROR_KEY]}")
    return {name: CaseResult.from_dict(d) for name, d in data.items()}


def _all_failed(cases: Mapping[str, Case], error: str, status: str = FAILED) -> dict[str, CaseResult]:
    return {name: CaseResult(case, status, error) for name, case in cases.items()}


def pool(parts: Sequence[Mapping[str, CaseResult]]) -> dict[str, CaseResult]:
    """One result per variant from several processes' results.

    A variant that did not succeed in some process takes that process's status and error. For
    the others the samples are pooled (tagged by process) and the metrics and module rows come
    from the first process, which measures memory (see `run_group`). Memory figures should be
    deterministic: those of every process that measured them are compared, and any that differ
    are named in `mem_disagreement` (the gate then does not decide that case's memory).
    """
    out: dict[str, CaseResult] = {}
    for name in parts[0]:
        results = [p[name] for p in parts if name in p]
        bad = next((r for r in results if not r.ok), None)
        if bad is not None:
            out[name] = bad
            continue
        samples = Samples.pooled([r.samples for r in results if r.samples is not None])
        metrics = {**results[0].metrics, "mem_disagreement": memory_disagreement(results)}
        out[name] = replace(results[0], samples=samples, metrics=metrics)
    return out


def memory_disagreement(results: Sequence[CaseResult]) -> str:
    """`metric: v0 vs v1 vs ...` for each memory figure the processes measured differently
    (`; `-joined), or "" when they agree. Byte counts of fixed shapes are deterministic, so a
    difference is a finding: caching, lazy initialisation or state carried between variants."""
    names = sorted({k for r in results for k in r.metrics if k in DETERMINISTIC_MEMORY})
    differ = []
    for metric in names:
        values = [r.metrics[metric] for r in results if r.metrics.get(metric) is not None]
        if len(set(values)) > 1:
            differ.append(f"{metric}: {' vs '.join(str(v) for v in values)}")
    return "; ".join(differ)
