"""Runs a group of cases in worker processes and pools what they measured."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench_lib.cases import Case
from bench_lib.results import FAILED, CaseResult
from bench_lib.timing import Samples
from bench_lib.worker import run_request

WORKER_TIMEOUT_S = 1800


def run_group(request: Mapping[str, Any], cases: Mapping[str, Case], processes: int) -> dict[str, CaseResult]:
    """Measure a group in `processes` fresh worker processes, one after the other, and pool them.

    `processes=0` measures in this process instead (for debugging; no isolation). `cases` names
    the group's cases by variant, so a worker that dies can be reported against each of them.
    """
    if processes == 0:
        return run_request(request)
    parts = [_run_worker(request, cases) for _ in range(processes)]
    return pool(parts)


def _run_worker(request: Mapping[str, Any], cases: Mapping[str, Case]) -> dict[str, CaseResult]:
    with tempfile.TemporaryDirectory(prefix="bench_lib_") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps(request))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "bench_lib.worker", str(req), str(res)],
                capture_output=True,
                text=True,
                timeout=WORKER_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return _all_failed(cases, f"worker timed out after {WORKER_TIMEOUT_S} s")
        if proc.returncode != 0 or not res.exists():
            lines = proc.stderr.strip().splitlines()
            why = lines[-1] if lines else "no message"
            return _all_failed(cases, f"worker process exited with status {proc.returncode}: {why}")
        data = json.loads(res.read_text())
    return {name: CaseResult.from_dict(d) for name, d in data.items()}


def _all_failed(cases: Mapping[str, Case], error: str) -> dict[str, CaseResult]:
    return {name: CaseResult(case, FAILED, error) for name, case in cases.items()}


def pool(parts: Sequence[Mapping[str, CaseResult]]) -> dict[str, CaseResult]:
    """One result per variant from several processes' results.

    A variant that did not succeed in some process takes that process's status and error. For
    the others the samples are pooled (tagged by process) and the metrics come from the first
    process; memory figures are deterministic, so every process measured the same bytes.
    """
    out: dict[str, CaseResult] = {}
    for name in parts[0]:
        results = [p[name] for p in parts if name in p]
        bad = next((r for r in results if not r.ok), None)
        if bad is not None:
            out[name] = bad
            continue
        samples = Samples.pooled([r.samples for r in results if r.samples is not None])
        out[name] = replace(results[0], samples=samples)
    return out
