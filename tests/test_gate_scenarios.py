"""The gate's exit codes on candidates made from a real tiny run, one scenario per decision.

Each candidate is the real report (and its samples) with one thing changed, as a pull request
would change it; the gate runs as the CLI does (`main`), and its last line must say which exit
code it is and why.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench_lib import gate
from bench_lib.cli import main
from bench_lib.measure.runner import memory_disagreement, pool
from bench_lib.records.results import CaseResult
from bench_lib.records.stats import Samples

ROOT = Path(__file__).resolve().parent.parent
CASE = dict(suite="inference", model="mlp", device="cpu", mode="no_grad", batch_size=1)
LABEL = "inference-mlp-cpu-b1-no_grad"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """One real tiny run of the MLP's inference cases, 2 worker processes per group."""
    out = tmp_path_factory.mktemp("real") / "base.csv"
    cmd = [sys.executable, "-m", "bench_lib", "run", "--profile", "tiny", "--model", "mlp",
           "--suites", "inference", "--processes", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _is_case(frame: pd.DataFrame) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for k, v in CASE.items():
        mask &= frame[k].astype(str) == str(v)
    return mask


def candidate(real_run: Path, folder: Path, report=None, samples=None, name: str = "cand.csv") -> Path:
    """A copy of the real run with `report(frame)` / `samples(frame)` applied (each returns the frame)."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(real_run, dtype=str, keep_default_na=False)
    raw = pd.read_csv(real_run.with_name(real_run.stem + ".samples.csv"), dtype=str, keep_default_na=False)
    frame = report(frame) if report else frame
    raw = samples(raw) if samples else raw
    path = folder / name
    frame.to_csv(path, index=False)
    raw.to_csv(path.with_name(path.stem + ".samples.csv"), index=False)
    return path


def gate_cli(capsys, base: Path, cand: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["gate", str(base), str(cand), "--config", "none", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_a_report_against_itself_exits_0(real_run, capsys):
    code, out, _ = gate_cli(capsys, real_run, real_run)
    assert code == 0
    assert last_line(out).startswith("gate: OK (exit 0): every gated verdict cleared")


@pytest.mark.parametrize(
    ("status", "error"),
    [("failed", "RuntimeError: shapes do not match"), ("oom", "OutOfMemoryError: CUDA out of memory")],
)
def test_a_case_that_now_fails_or_runs_out_of_memory_is_a_regression(
    real_run, tmp_path, capsys, status, error
):
    def broken(frame):
        frame.loc[_is_case(frame), ["status", "error"]] = [status, error]
        return frame

    code, out, _ = gate_cli(capsys, real_run, candidate(real_run, tmp_path, broken))
    assert code == 1
    assert LABEL in out and f"ok in the baseline, {status} in the candidate: {error.split(':')[0]}" in out
    assert last_line(out).startswith("gate: FAIL (exit 1): 1 failing [1 broken]")


def test_a_removed_case_is_a_regression_unless_rules_say_report(real_run, tmp_path, capsys):
    def removed(frame):
        return frame[~_is_case(frame)]

    cand = candidate(real_run, tmp_path, removed)
    code, out, _ = gate_cli(capsys, real_run, cand)
    assert code == 1 and "absent from the candidate" in out
    assert last_line(out).startswith("gate: FAIL (exit 1): 1 failing [1 missing]")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f'[[tool.bench_lib.gate.rules]]\nmatch = "{LABEL}"\nmissing = "report"\n')
    assert main(["gate", str(real_run), str(cand), "--config", str(pyproject)]) == 0
    assert "1 report-only" in last_line(capsys.readouterr().out)


def test_memory_is_gated_across_builds_of_one_torch_release(real_run, tmp_path, capsys):
    """A stock wheel calls itself `2.13.0`, the CPU wheel `2.13.0+cpu`: one release, same bytes."""

    def stock_and_bigger(frame):
        frame["torch_version"] = frame["torch_version"].str.split("+").str[0]
        peak = frame.loc[_is_case(frame), "mem_peak_bytes"].astype(int) + 4096
        frame.loc[_is_case(frame), "mem_peak_bytes"] = peak.astype(str)
        return frame

    code, out, _ = gate_cli(capsys, real_run, candidate(real_run, tmp_path, stock_and_bigger))
    assert code == 1 and "+4096 bytes" in out
    assert last_line(out).startswith("gate: FAIL (exit 1): 1 failing [1 memory grew]")
    # the same release without the change clears
    code, out, _ = gate_cli(capsys, real_run, candidate(real_run, tmp_path / "same", lambda f: stock_and_bigger(f)
                                                        .assign(mem_peak_bytes=pd.read_csv(real_run, dtype=str)["mem_peak_bytes"])))  # fmt: skip
    assert code == 0


def test_memory_across_torch_releases_is_undecided(real_run, tmp_path, capsys):
    code, out, _ = gate_cli(
        capsys, real_run, candidate(real_run, tmp_path, lambda f: f.assign(torch_version="2.14.0"))
    )
    assert code == 3
    assert "torch builds differ" in last_line(out) and last_line(out).startswith("gate: UNDECIDED (exit 3)")
    assert main(["gate", str(real_run), str(real_run), "--config", "none", "--only", "memory"]) == 0


def test_memory_of_cuda_rows_needs_the_same_cuda_and_cudnn():
    row = {
        "device": "cuda",
        "torch_version": "2.11.0+cu130",
        "cuda_version": "13.0",
        "cudnn_version": "91002",
    }
    assert gate.memory_build(row) != gate.memory_build({**row, "cudnn_version": "90100"})
    assert gate.memory_build(row) != gate.memory_build({**row, "torch_version": "2.11.0+cu128"})
    cpu = {"device": "cpu", "torch_version": "2.13.0+cpu"}
    assert gate.memory_build(cpu) == gate.memory_build({**cpu, "torch_version": "2.13.0"})
    assert gate.memory_build(cpu) != gate.memory_build({**cpu, "torch_version": "2.13.1"})


def slower(factor: float):
    def edit(raw):
        mask = _is_case(raw)
        raw.loc[mask, "latency_ms"] = (raw.loc[mask, "latency_ms"].astype(float) * factor).astype(str)
        return raw

    return edit


def test_a_2x_slowdown_in_one_run_per_side_is_undecided_never_ok(real_run, tmp_path, capsys):
    code, out, _ = gate_cli(capsys, real_run, candidate(real_run, tmp_path, samples=slower(2.0)))
    assert code == 3
    assert "too few runs (1 vs 1)" in out and "+100.00%" in out
    assert last_line(out).startswith("gate: UNDECIDED (exit 3): nothing failed, but 1 verdict(s)")
    # with processes as the unit (2 per side: still too few for p < 0.01) it stays undecided
    code, out, _ = gate_cli(
        capsys, real_run, candidate(real_run, tmp_path, samples=slower(2.0)), "--unit", "process"
    )
    assert code == 3


def test_a_slowdown_within_the_threshold_with_too_few_runs_clears_and_is_counted(real_run, tmp_path, capsys):
    code, out, _ = gate_cli(capsys, real_run, candidate(real_run, tmp_path, samples=slower(1.05)))
    assert code == 0
    # one run per side: every latency test is inconclusive, and all six are within the threshold
    assert "18 cleared (6 of them inconclusive within the threshold)" in last_line(out)


def test_a_2x_slowdown_on_another_machine_is_undecided(real_run, tmp_path, capsys):
    cand = candidate(real_run, tmp_path, lambda f: f.assign(machine_id="feedfacecafe"), slower(2.0))
    code, out, _ = gate_cli(capsys, real_run, cand)
    assert code == 3
    assert "machines differ" in last_line(out)
    # latency is not gated across machines, but memory still is, and memory alone clears
    assert main(["gate", str(real_run), str(cand), "--config", "none", "--only", "memory"]) == 0
    capsys.readouterr()


def test_memory_that_differs_between_processes_is_undecided(real_run, tmp_path, capsys):
    def varies(frame):
        frame.loc[_is_case(frame), "mem_disagreement"] = "mem_peak_bytes: 1024 vs 2048"
        return frame

    code, out, _ = gate_cli(capsys, real_run, candidate(real_run, tmp_path, varies))
    assert code == 3 and "differs between worker processes of one run" in out


def _result(process: int, **metrics) -> CaseResult:
    from bench_lib.records.cases import Case

    samples = Samples(
        iterations=1, host_ms=(1.0, 1.1), device_ms=None, warmup_rounds=0, process=(process,) * 2
    )
    return CaseResult(Case(**CASE), samples=samples, metrics=metrics)


def test_pool_compares_every_process_memory_not_only_the_first():
    same = pool([{"x": _result(0, mem_peak_bytes=512)}, {"x": _result(1, mem_peak_bytes=512)}])
    assert same["x"].metrics["mem_disagreement"] == ""
    differ = pool([{"x": _result(0, mem_peak_bytes=512)}, {"x": _result(1, mem_peak_bytes=512)},
                   {"x": _result(2, mem_peak_bytes=1024)}])  # fmt: skip
    assert differ["x"].metrics["mem_disagreement"] == "mem_peak_bytes: 512 vs 512 vs 1024"
    assert differ["x"].metrics["mem_peak_bytes"] == 512  # the figure stays; the disagreement is named
    assert (
        memory_disagreement([_result(0, latency_ratio_to_grad=1.0), _result(1, latency_ratio_to_grad=0.9)])
        == ""
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nan", "latency_ms must be a finite number >= 0; row 1 has 'nan'"),
        ("inf", "has 'inf'"),
        ("-0.5", "has '-0.5'"),
        ("fast", "has 'fast'"),
    ],
)
def test_bad_samples_are_one_line_and_exit_2(real_run, tmp_path, capsys, value, message):
    def bad(raw):
        raw.loc[0, "latency_ms"] = value
        return raw

    code, out, err = gate_cli(capsys, real_run, candidate(real_run, tmp_path, samples=bad))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_zero_median_samples_and_unknown_runs_are_bad_input(real_run, tmp_path, capsys):
    code, _, err = gate_cli(capsys, real_run, candidate(real_run, tmp_path, samples=slower(0.0)))
    assert code == 2 and f"zero median latency for {LABEL}" in err
    code, _, err = gate_cli(
        capsys, real_run, candidate(real_run, tmp_path, samples=lambda r: r.assign(run_id="x"))
    )
    assert code == 2 and "samples of run 'x', which the report does not have" in err


def test_a_regression_wins_over_an_undecided_verdict(real_run, tmp_path, capsys):
    """Five runs per side: a clear 2x slowdown of one case is a regression (exit 1) even while
    another case's memory cannot be decided."""
    rng = np.random.default_rng(0)

    def run_copy(folder: Path, i: int, factor: float, varies: bool) -> None:
        def report(frame):
            frame["run_id"] = f"r{folder.name}{i}"
            if varies:
                other = (frame["mode"] == "grad") & (frame["batch_size"] == "4")
                frame.loc[other, "mem_disagreement"] = "mem_peak_bytes: 1 vs 2"
            return frame

        def samples(raw):
            raw["run_id"] = f"r{folder.name}{i}"
            jitter = 1 + 0.01 * rng.standard_normal(len(raw))
            raw["latency_ms"] = (raw["latency_ms"].astype(float) * jitter).astype(str)
            return slower(factor)(raw)

        candidate(real_run, folder, report, samples, name=f"r{i}.csv")

    for i in range(5):
        run_copy(tmp_path / "base", i, 1.0, False)
        run_copy(tmp_path / "cand", i, 2.0, True)
    code, out, _ = gate_cli(capsys, tmp_path / "base", tmp_path / "cand")
    assert code == 1
    assert last_line(out).startswith("gate: FAIL (exit 1): 1 failing [1 latency regression]; 2 undecided")


def test_the_github_actions_example_gates_memory_on_a_stock_runner():
    """The example workflow runs `make gate-memory` on a runner whose torch is a stock `2.13.0`
    wheel, against the committed baseline from `2.13.0+cpu`: those rows are gated, not skipped."""
    workflow = (ROOT / "examples" / "github-actions" / "bench.yml").read_text()
    assert "make gate-memory" in workflow and "make gate BASE=" in workflow
    makefile = (ROOT / "Makefile").read_text()
    for target in ("gate-memory:", "gate:", "test:"):
        assert f"\n{target}" in makefile
    baseline = ROOT / "results" / "baseline" / "tiny-cpu.csv"
    base = gate.load_side([baseline])
    stock = base.frame.assign(torch_version=base.frame["torch_version"].str.split("+").str[0])
    bigger = stock.copy()
    bigger.loc[0, "mem_peak_bytes"] += 4096
    verdicts = gate.gate(
        base, gate.Side(bigger, {}, ("stock",)), gate.load_config(None, {"latency": "report"})
    )
    assert gate.exit_code(verdicts) == 1
    assert sum(v.decision == gate.REGRESSION for v in verdicts) == 1
