"""The precision command: coverage of repeat runs' intervals and the share within target,
checked on runs simulated with a known spread, and shown failing on too-narrow intervals."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench_lib.analysis.precision import coverage, target_share
from bench_lib.cli import main
from bench_lib.records.stats import t_half_width

TRUE = {("mlp", 1): 0.85, ("mlp", 32): 0.9, ("cnn", 1): 0.7, ("cnn", 32): 0.95}


def simulated_run(rng, shrink=1.0, processes=5, run_sd=0.0):
    """A report of four no_grad ratios, each the mean of `processes` per-process ratios (sd 0.01
    around the true ratio, plus a shift `run_sd` shared by the whole run: drift that the processes
    of one run cannot see), with its t-interval times `shrink`."""
    rows = []
    shift = rng.normal(0, run_sd)
    for (model, batch), ratio in TRUE.items():
        per_process = rng.normal(ratio + shift, 0.01, processes)
        h = t_half_width(per_process) * shrink
        value = per_process.mean()
        for mode, r, lo, hi in (("grad", 1.0, 1.0, 1.0), ("no_grad", value, value - h, value + h)):
            rows.append({
                "suite": "inference", "model": model, "device": "cpu", "mode": mode, "batch_size": batch,
                "dtype": "float32", "strategy": "", "optimizer": "", "compile": "", "status": "ok",
                "latency_ratio_to_grad": r, "latency_ratio_to_grad_ci_low": lo, "latency_ratio_to_grad_ci_high": hi,
            })  # fmt: skip
    return pd.DataFrame(rows)


def test_honest_intervals_cover_the_difference_between_runs():
    rng = np.random.default_rng(0)
    runs = [simulated_run(rng) for _ in range(30)]
    c = coverage(runs, "latency_ratio_to_grad")
    assert c.pairs == 4 * 30 * 29 // 2 and c.share >= 0.95


@pytest.mark.parametrize(("shrink", "run_sd"), [(0.4, 0.0), (1.0, 0.02)])
def test_too_narrow_intervals_or_drift_between_runs_fail_the_coverage(shrink, run_sd):
    """Intervals made too narrow, or runs that drift apart by more than their processes show:
    both must show up as coverage well under 90%."""
    rng = np.random.default_rng(0)
    runs = [simulated_run(rng, shrink=shrink, run_sd=run_sd) for _ in range(30)]
    c = coverage(runs, "latency_ratio_to_grad")
    assert c.share < 0.8 and c.worst


def test_target_share_counts_ratios_not_their_references():
    frame = simulated_run(np.random.default_rng(1))
    met, total = target_share(frame, precision=1.0)
    assert (met, total) == (4, 4)
    assert target_share(frame, precision=1e-9) == (0, 4)


def test_the_command_reads_reports_and_rejects_a_single_one(tmp_path, capsys):
    small = Path(__file__).parent / "data" / "small.csv"
    assert main(["precision", str(small), str(small)]) == 0
    assert "2 runs" in capsys.readouterr().out
    assert main(["precision", str(small)]) == 2
    assert capsys.readouterr().err.startswith("error: precision needs at least two reports")
