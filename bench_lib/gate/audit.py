"""Audit of the regression gate itself: false alarms on identical code (A/A) and the share of
injected slowdowns it catches (`make gate-audit`, or `python -m bench_lib.gate.audit --help`).

Each trial measures, interleaved (plain, +s1, +s2, ..., plain, repeated `repeat` times), `2 *
repeat` plain runs and `repeat` runs per injected slowdown of one model, each a fresh `pytest
benchmarks/` process. Then it gates plain half A against plain half B (A/A: every failing verdict
is a false alarm; exit 3, undecided, is counted apart) and plain half A against each injected set (a slowdown is caught when the
injected model's inference cases are flagged as regressions; its training steps, whose forward is
slowed too, are listed apart; a flagged case of another model is a false alarm). Figures are
written to `audit.json` (`--evaluate-only`: gate saved runs again, into `audit.evaluated.json`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench_lib import gate
from bench_lib.records.schema import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent


def run_suite(out: Path, select: str, models: str, processes: int, inject: str = "") -> None:
    cmd = [
        sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
        "-k", select, f"--bench-models={models}", f"--bench-processes={processes}", "--bench-devices=cpu",
        f"--bench-results-dir={out}", f"--bench-inject={inject}", "--bench-history=off",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"audit: a benchmark run failed:\n{proc.stdout[-2000:]}")


def verdicts(base: Path, cand: Path) -> list[gate.Verdict]:
    def runs(folder: Path) -> list[Path]:
        return sorted(p for p in folder.glob("2*.csv") if not p.name.endswith(".samples.csv"))

    return gate.gate(gate.load_side(runs(base)), gate.load_side(runs(cand)), gate.Config())


def audit(
    out: Path,
    trials: int,
    repeat: int,
    slowdowns: Sequence[float],
    model: str,
    models: str,
    select: str,
    processes: int,
    evaluate_only: bool = False,
) -> dict:
    """Measure `trials` trials (or, with `evaluate_only`, gate the trials already in `out` again
    with the current gate: decision rules can be compared on the same runs)."""
    results: dict = {"trials": [], "settings": {"trials": trials, "repeat": repeat, "slowdowns": list(slowdowns),
                     "model": model, "models": models, "select": select, "processes": processes}}  # fmt: skip
    if evaluate_only:
        trials = len(list(out.glob("trial*/plain_b")))
    for t in range(trials):
        trial = out / f"trial{t}"
        for _ in range(0 if evaluate_only else repeat):
            run_suite(trial / "plain_a", select, models, processes)
            for s in slowdowns:
                run_suite(trial / f"slow{s}", select, models, processes, f"{model}:slow={s}")
            run_suite(trial / "plain_b", select, models, processes)
        aa = verdicts(trial / "plain_a", trial / "plain_b")
        row = {
            "trial": t,
            "aa_exit_code": gate.exit_code(aa),
            "aa_false_alarms": [f"{v.case} {v.metric} {v.why}" for v in aa if v.fails],
            "aa_undecided": [f"{v.case} {v.metric} {v.why}" for v in aa if v.undecided],
            "aa_inconclusive": sum(v.decision == gate.INCONCLUSIVE for v in aa),
            "aa_latency_verdicts": sum(v.metric == gate.LATENCY for v in aa),
        }
        for s in slowdowns:
            if not (trial / f"slow{s}").is_dir():
                continue
            vs = [v for v in verdicts(trial / "plain_a", trial / f"slow{s}") if v.metric == gate.LATENCY]
            injected = [v for v in vs if f"-{model}-" in v.case]  # its training steps are slowed too
            target = [v for v in injected if v.case.startswith("inference")]
            others = [v for v in vs if v not in injected]
            row[f"slow{s}"] = {
                "exit_code": gate.exit_code(vs),
                "flagged": sum(v.decision == gate.REGRESSION for v in target),
                "undecided": sum(v.undecided for v in target),
                "cases": len(target),
                "changes": [round(v.change, 4) for v in target if v.change is not None],
                "finetune_flagged": [v.case for v in injected if v not in target and v.fails],
                "false_alarms_elsewhere": [v.case for v in others if v.fails],
            }
        results["trials"].append(row)
        print(json.dumps(row), flush=True)
        name = "audit.evaluated.json" if evaluate_only else "audit.json"
        write_text_atomic(out / name, json.dumps(results | {"summary": summary(results)}, indent=2))
    print(json.dumps(summary(results)), flush=True)
    return results


def summary(results: dict) -> dict:
    """Totals over the trials: A/A gates with a false alarm, and per slowdown the cases caught."""
    trials = results["trials"]
    out: dict = {
        "trials": len(trials),
        "aa_gates_with_false_alarms": sum(bool(t["aa_false_alarms"]) for t in trials),
        "aa_exit_codes": [t.get("aa_exit_code") for t in trials],
        "aa_gates_undecided": sum(t.get("aa_exit_code") == gate.EXIT_UNDECIDED for t in trials),
        "aa_false_alarms": sum(len(t["aa_false_alarms"]) for t in trials),
        "aa_inconclusive": sum(t["aa_inconclusive"] for t in trials),
        "aa_latency_verdicts": sum(t["aa_latency_verdicts"] for t in trials),
    }
    for key in sorted({k for t in trials for k in t if k.startswith("slow")}):
        rows = [t[key] for t in trials if key in t]
        out[key] = {
            "trials": len(rows),
            "trials_with_a_catch": sum(r["flagged"] > 0 for r in rows),
            "trials_all_caught": sum(r["flagged"] == r["cases"] for r in rows),
            "cases_flagged": sum(r["flagged"] for r in rows),
            "cases_undecided": sum(r.get("undecided", 0) for r in rows),
            "exit_codes": [r.get("exit_code") for r in rows],
            "cases": sum(r["cases"] for r in rows),
            "injected_model_training_steps_flagged": sum(len(r.get("finetune_flagged", [])) for r in rows),
            "false_alarms_elsewhere": sum(len(r["false_alarms_elsewhere"]) for r in rows),
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench_lib.gate.audit", description=__doc__)
    p.add_argument("--out", default="results/audit", help="folder for the runs and audit.json")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--repeat", type=int, default=5, help="runs per side and trial (5 vs 5 reaches p=0.004)")
    p.add_argument("--slowdowns", default="0.10,0.25", help="injected slowdowns, comma-separated fractions")
    p.add_argument("--model", default="mlp", help="the model that gets the slowdown")
    p.add_argument("--models", default="mlp,transformer", help="models each run measures")
    p.add_argument("--select", default="inference", help="pytest -k expression for each run")
    p.add_argument("--processes", type=int, default=1, help="worker processes per group in each run")
    p.add_argument(
        "--evaluate-only", action="store_true", help="gate the trials already in --out again, measure nothing"
    )
    args = p.parse_args(argv)
    slowdowns = [float(s) for s in args.slowdowns.split(",") if s]
    audit(
        Path(args.out),
        args.trials,
        args.repeat,
        slowdowns,
        args.model,
        args.models,
        args.select,
        args.processes,
        args.evaluate_only,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
