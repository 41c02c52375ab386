"""A calibration ruler measured in every run, per device: how fast the machine itself was on fixed
workloads, so a comparison of two reports can tell a change in the code from a change in the
machine (its rows join in `compare` like any case).

Three fixed workloads, measured interleaved like the modes of a model:
- `matmul`: a 512 x 512 fp32 matrix product (compute-bound);
- `copy`: copying a 16 MiB fp32 tensor (memory-bandwidth-bound);
- `tiny_ops`: 100 additions on a one-element tensor (dispatch-overhead-bound).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bench_lib.measure.devices import Device
from bench_lib.measure.timing import Variant, calibrate_iterations, measure_interleaved
from bench_lib.records.cases import RULER, Case, Profile
from bench_lib.records.results import CaseResult, failure
from bench_lib.suites.ruler import RULERS

__all__ = ["RULERS", "RULER_MODEL", "measure_ruler_group"]

RULER_MODEL = "ruler"
MATMUL_N = 512
COPY_ELEMENTS = 4 * 2**20  # 16 MiB of fp32
TINY_OPS = 100


def _workloads(device: str) -> dict[str, Callable[[], object]]:
    a = torch.randn(MATMUL_N, MATMUL_N, device=device)
    b = torch.randn(MATMUL_N, MATMUL_N, device=device)
    src = torch.randn(COPY_ELEMENTS, device=device)
    dst = torch.empty_like(src)
    one = torch.zeros(1, device=device)

    def tiny_ops() -> None:
        x = one
        for _ in range(TINY_OPS):
            x = x + 1

    return {"matmul": lambda: torch.mm(a, b), "copy": lambda: dst.copy_(src), "tiny_ops": tiny_ops}


def measure_ruler_group(device: Device, profile: Profile, variants: Sequence[str]) -> dict[str, CaseResult]:
    """Time the asked-for rulers on `device`, interleaved, at most 50 rounds per process (a ruler
    only needs to be steady, not to have a p99); calls per round as the profile says (calibrated
    unless it fixes them)."""
    cases = {v: Case(RULER, RULER_MODEL, device.kind, v, 1) for v in variants}
    try:
        work = _workloads(device.name)
        with torch.no_grad():
            chosen = [Variant(v, work[v]) for v in variants]
            iterations = profile.iterations or calibrate_iterations(chosen, device, profile.min_round_s)
            timed = measure_interleaved(
                chosen,
                device,
                rounds=min(profile.rounds, 50),
                warmup_rounds=min(profile.warmup_rounds, 5),
                iterations=iterations,
            )
    except Exception as exc:  # noqa: BLE001
        device.release_memory()
        return {v: failure(c, exc) for v, c in cases.items()}
    out = {v: failure(cases[v], exc) for v, exc in timed.errors.items()}
    out |= {v: CaseResult(cases[v], samples=s, items_per_batch=1) for v, s in timed.samples.items()}
    return {v: out[v] for v in variants}
