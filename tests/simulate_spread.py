"""How well `bench_lib precision` estimates the spread between runs (README, "How precise are the
figures"): simulated runs of 40 cases, 4-15 processes each, a case's own process spread fixed
between 0.5% and 5%, its intervals widened by ci_run_sd 1.2% (the fine-tuning suite's default), and a
true spread between runs that moves each case alone or a whole run together. For 3 and 5 runs
and 150 sets each: the mean estimate and its 10th-90th percentiles, how often the 95% interval
contains the true spread, and the verdicts on the setting. `python tests/simulate_spread.py`
(about 2 minutes)."""

import numpy as np
import pandas as pd

from bench_lib.analysis.precision import run_spread
from bench_lib.records.stats import Estimate, t_half_width, with_run_spread

SETTING = 0.012


def run(rng: np.random.Generator, spread: float, shared: bool, cases: int = 40) -> pd.DataFrame:
    shift = rng.normal(0, spread)
    rows = []
    for case in range(cases):
        processes = int(rng.integers(4, 16))
        own = float(np.exp(np.random.default_rng([case, 99]).uniform(np.log(0.005), np.log(0.05))))
        logs = rng.normal(
            np.log(0.6 + case / 100) + (shift if shared else rng.normal(0, spread)), own, processes
        )
        value, h = float(np.exp(logs.mean())), t_half_width(logs)
        e = with_run_spread(Estimate(value, value * np.exp(-h), value * np.exp(h), processes), SETTING)
        rows.append({
            "suite": "inference", "model": f"m{case}", "device": "cpu", "mode": "no_grad", "batch_size": 1,
            "dtype": "float32", "strategy": "", "optimizer": "", "compile": "", "status": "ok",
            "latency_ratio_to_grad": value, "latency_ratio_to_grad_ci_low": e.low,
            "latency_ratio_to_grad_ci_high": e.high, "ci_run_sd": SETTING, "processes": processes,
        })  # fmt: skip
    return pd.DataFrame(rows)


def main(sets: int = 150) -> None:
    rng = np.random.default_rng(0)
    for runs in (3, 5):
        for shared in (True, False):
            for spread in (0.0, 0.008, SETTING):
                found, held, verdicts = [], 0, {}
                for _ in range(sets):
                    s = run_spread([run(rng, spread, shared) for _ in range(runs)], "latency_ratio_to_grad")
                    assert s is not None and s.low is not None and s.high is not None
                    found.append(s.value)
                    held += s.low <= spread <= s.high
                    verdicts[s.verdict()] = verdicts.get(s.verdict(), 0) + 1
                p10, p90 = np.percentile(found, [10, 90])
                print(
                    f"{runs} runs, {'a whole run moves' if shared else 'each case moves alone'}, true "
                    f"{spread:.1%}: mean {np.mean(found):.2%} (10-90%: {p10:.2%}-{p90:.2%}); interval holds "
                    f"it in {held / sets:.0%}; verdicts {verdicts}"
                )


if __name__ == "__main__":
    main()
