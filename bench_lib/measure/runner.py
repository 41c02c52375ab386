"""Runs a group of cases in worker processes and pools what they measured."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import signal
from collections.abc import Mapping, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from bench_lib.measure.worker import run_request
from bench_lib.records.cases import Case
from bench_lib.records.results import FAILED, OOM, CaseResult, describe_error
from bench_lib.records.schema import DETERMINISTIC_MEMORY
from bench_lib.records.stats import Samples

WORKER_TIMEOUT_S = 1800
ERROR_KEY = "__error__"


def run_group(
    request: Mapping[str, Any], cases: Mapping[str, Case], processes: int, start_method: str = "forkserver"
) -> dict[str, CaseResult]:
    """Measure a group in `processes` fresh worker processes, one after the other, and pool them.

    The first process that measures calibrates the calls per round (unless the profile fixes
    them); the following ones reuse its figure, so that their samples pool. Memory is traced by
    the first and the last process only (the trace costs time; see `measure.memory_trace`): its
    figures are exact and deterministic, so the two must agree, and `pool` names any difference.
    `processes=0` measures in this process instead (for debugging; no isolation). `cases` names
    the group's cases by variant, so a worker that dies can be reported against each of them.
    """
    if processes == 0:
        return run_request(request)
    parts = []
    for i in range(processes):
        traced = i in (0, processes - 1)
        parts.append(_run_worker({**request, "memory": traced}, cases, start_method))
        request = with_iterations(request, parts[-1])
    return pool(parts)


def with_iterations(request: Mapping[str, Any], results: Mapping[str, CaseResult]) -> Mapping[str, Any]:
    """`request` with its profile's calls per round fixed to those `results` were measured with
    (unchanged where the profile already fixes them or no result has samples)."""
    measured = next((r.samples.iterations for r in results.values() if r.samples is not None), None)
    if measured is None or request["profile"].get("iterations"):
        return request
    return {**request, "profile": {**request["profile"], "iterations": measured}}


START_METHODS = ("forkserver", "spawn")


def _context(method: str) -> Any:
    """How workers start.

    - `forkserver` (default): workers fork from a server process that imported torch and bench_lib
      once and ran nothing, so each starts clean in milliseconds instead of the ~1.5 s of a fresh
      interpreter. They share the server's address-space layout, so a run's processes are not
      independent of it: figures that depend on memory layout vary between runs more than
      between a run's processes (seen on the MLP's training step at batch 1).
    - `spawn`: a fresh interpreter per worker: fully independent processes, ~1.5 s each.
    Where forkserver is missing (macOS, Windows), spawn.
    """
    if method == "forkserver" and "forkserver" not in multiprocessing.get_all_start_methods():
        method = "spawn"
    if method not in _CONTEXTS:
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(
                [
                    "bench_lib.measure.worker",
                    "bench_lib.suites.inference.measure",
                    "bench_lib.suites.finetune.measure",
                    "bench_lib.suites.ruler.measure",
                ]
            )
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
