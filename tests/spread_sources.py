"""Where a ratio's spread between runs comes from: the machine's state over minutes, or the
forkserver a run's workers fork from.

    .venv/bin/python tests/spread_sources.py [--drivers 8] [--repeats 5] [--processes 6]
                                             [--groups mlp-1,cnn-32,transformer-32,polynomial-1]

Each driver is a fresh Python process with its own forkserver (what one `make bench` has). It
measures the chosen CPU inference groups `--repeats` times over, round-robin (a group's repeats
lie 20-40 s apart), each with exactly `--processes` worker processes, as the suite measures them.
Per (group, mode) the log ratio then splits three ways, by the method of moments:

- `se`: what a repeat's own processes say (the standard error of its t-interval);
- `time`: how far repeats in one forkserver move beyond their own `se` (the machine's state
  over the minutes a driver runs);
- `forkserver`: how far the drivers' means move beyond what `time` and `se` explain (what stays
  fixed for one forkserver and differs between them: the libraries' addresses, the hash seed,
  the server's own heap; and any state of the machine that lasts a driver's ~100 s).

A default run's groups cannot see either: its processes come from one forkserver within seconds
of each other. Both are what `ci_run_sd` adds to a ratio's interval. Takes about 100 s per driver
with the defaults; run it on an otherwise idle machine. Figures: README "How precise are the
figures".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


def measure(repeats: int, processes: int, groups: list[str], out: Path) -> None:
    """One driver: every group `repeats` times, round-robin, in this process's forkserver."""
    import time

    from scipy import stats as sps

    from bench_lib.measure.runner import Effort, run_group
    from bench_lib.session import BenchSession, RunConfig
    from bench_lib.suites import SUITES

    config = RunConfig.parse("default", devices="cpu", results_dir=out.parent)
    session = BenchSession(config)  # as a run's: glibc malloc pinned, 1 torch thread
    suite = SUITES["inference"]
    by_group: dict = {}
    for case in config.cases_of("inference"):
        by_group.setdefault(case.group, []).append(case)
    chosen = [g for g in by_group if f"{g.model}-{g.batch_size}" in groups]
    rows = []
    for k in range(repeats):
        for group in chosen:
            cases = by_group[group]
            began = time.time()
            pooled, _, n = run_group(
                session._request(group, cases),
                {c.variant: c for c in cases},
                Effort(processes),
                config.start_method,
            )
            for case, result in suite.add_ratios({r.case: r for r in pooled.values()}).items():
                value = result.metrics.get("latency_ratio_to_grad")
                high = result.metrics.get("latency_ratio_to_grad_ci_high")
                if case.mode == "grad" or value is None or high is None:
                    continue
                se = float(np.log(high / value) / sps.t.ppf(0.975, n - 1))
                rows.append({"repeat": k, "group": f"{group.model}-{group.batch_size}", "mode": case.mode,
                             "ratio": value, "se": se, "time": began})  # fmt: skip
            print(f"  repeat {k + 1}/{repeats} {group.model} batch {group.batch_size}: {time.time() - began:.1f} s",
                  flush=True)  # fmt: skip
    out.write_text(json.dumps(rows))


def split(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (group, mode): `se`, the within-driver sd, and the `time` and `forkserver` parts (sd of
    the log ratio; negative where the moments leave nothing: no such part measurable)."""
    out = []
    frame = frame.assign(y=np.log(frame["ratio"]))
    for (group, mode), s in frame.groupby(["group", "mode"]):
        by_driver = s.groupby("driver")["y"]
        repeats = by_driver.size().mean()
        within = by_driver.var(ddof=1).mean()
        se2 = float((s["se"] ** 2).mean())
        between = by_driver.mean().var(ddof=1)

        def signed_sd(v: float) -> float:
            return float(np.sign(v) * np.sqrt(abs(v)))

        out.append({"case": f"{group} {mode}", "n": len(s), "se": np.sqrt(se2), "sd within": np.sqrt(within),
                    "time": signed_sd(within - se2), "forkserver": signed_sd(between - within / repeats)})  # fmt: skip
    return pd.DataFrame(out).set_index("case")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--drivers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--groups", default="mlp-1,cnn-32,transformer-32,polynomial-1")
    parser.add_argument("--driver", type=Path, help=argparse.SUPPRESS)  # one driver's output (internal)
    args = parser.parse_args()
    groups = args.groups.split(",")
    if args.driver is not None:
        measure(args.repeats, args.processes, groups, args.driver)
        return
    frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in range(args.drivers):
            print(f"driver {d + 1}/{args.drivers} (a fresh process and forkserver)", flush=True)
            out = Path(tmp) / f"d{d}.json"
            subprocess.run(
                [sys.executable, __file__, "--repeats", str(args.repeats), "--processes", str(args.processes),
                 "--groups", args.groups, "--driver", str(out)],
                check=True,
            )  # fmt: skip
            frames.append(pd.DataFrame(json.loads(out.read_text())).assign(driver=d))
    table = split(pd.concat(frames, ignore_index=True))
    shown = table.copy()
    for column in ("se", "sd within", "time", "forkserver"):
        shown[column] = [f"{v:.2%}" for v in table[column]]
    print(shown.to_string())
    print(
        f"median over cases: time {table['time'].median():.2%}, forkserver {table['forkserver'].median():.2%}; "
        f"together (in quadrature, parts below 0 as 0) "
        f"{np.sqrt((table['time'].clip(lower=0) ** 2 + table['forkserver'].clip(lower=0) ** 2).median()):.2%}"
    )


if __name__ == "__main__":
    main()
