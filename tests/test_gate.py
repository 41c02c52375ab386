"""The gate's decisions on synthetic samples (a seeded fake), its configuration and its CLI."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench_lib import gate
from bench_lib.cli import main
from bench_lib.errors import UserError
from bench_lib.records.schema import read_report

SMALL = Path(__file__).parent / "data" / "small.csv"
KEY = ("inference", "mlp", "cpu", "grad", "32", "float32", "", "")
LABEL = "inference-mlp-cpu-b32-grad"


def side(samples=None, n=8, scale=1.0, noise=0.01, seed=0, frame=None, **changes):
    """A report side: the fixture report (with `changes` to its columns) and per-run medians of
    every successful case drawn around its median (seeded), `samples` overriding the mlp grad case."""
    frame = read_report(SMALL) if frame is None else frame
    for column, value in changes.items():
        frame[column] = value
    rng = np.random.default_rng(seed)
    medians = {}
    for _, row in frame[frame["status"] == "ok"].iterrows():
        key = tuple(str(row[k]) for k in gate.KEY_FIELDS)
        medians[key] = list(row["latency_ms_median"] * scale * (1 + noise * rng.standard_normal(n)))
    if samples is not None:
        medians[KEY] = samples
    return gate.Side(frame, medians, ("fake.csv",))


def verdict(verdicts, metric="latency_ms_median", case=LABEL):
    return next(v for v in verdicts if v.case == case and v.metric == metric)


CONFIG = gate.Config()


def test_identical_code_passes():
    verdicts = gate.gate(side(seed=1), side(seed=2), CONFIG)
    assert gate.exit_code(verdicts) == 0
    assert {v.decision for v in verdicts} == {"pass"}


def test_a_real_slowdown_is_a_regression():
    verdicts = gate.gate(side(seed=1), side(seed=2, scale=1.25), CONFIG)
    v = verdict(verdicts)
    assert v.decision == "regression" and v.change == pytest.approx(0.25, abs=0.02) and v.p_value < 0.01
    assert gate.exit_code(verdicts) == 1


def test_a_slowdown_below_the_threshold_passes_even_if_significant():
    v = verdict(gate.gate(side(seed=1), side(seed=2, scale=1.05), CONFIG))
    assert v.decision == "pass" and "within 10%" in v.why


def test_a_slowdown_must_be_significantly_beyond_the_margin():
    """+12% median, but two candidate runs are within +5% of baseline runs: not established beyond
    the margin (half the threshold), so it passes; with margin 0 the same runs are a regression."""
    base = [1.00, 1.01, 0.99, 1.02, 0.98]
    cand = [1.06, 1.16, 1.12, 1.07, 1.15]
    v = gate._latency("x", base, cand, gate.Rules())
    assert v.decision == "inconclusive" and v.outcome == "undecided" and "not established beyond +5%" in v.why
    assert gate._latency("x", base, cand, gate.Rules(margin=0.0)).decision == "regression"
    assert gate._latency("x", base, cand, gate.Rules(inconclusive="report")).outcome == "report-only"
    with pytest.raises(UserError, match="margin"):
        gate.Rules(margin=0.2)


def test_too_few_samples_is_inconclusive_not_a_pass_or_fail():
    v = verdict(gate.gate(side(n=3, seed=1), side(n=3, seed=2, scale=1.5), CONFIG))
    assert v.decision == "inconclusive" and "too few runs (3 vs 3)" in v.why and v.outcome == "undecided"
    assert gate.min_p_value(3, 3) == pytest.approx(1 / 20)


def test_too_much_noise_is_inconclusive():
    v = verdict(gate.gate(side(seed=1, noise=0.3), side(seed=2, noise=0.3, scale=1.5), CONFIG))
    assert v.decision == "inconclusive" and "spread" in v.why


def test_an_improvement_is_reported_and_does_not_fail():
    verdicts = gate.gate(side(seed=1), side(seed=2, scale=0.7), CONFIG)
    assert verdict(verdicts).decision == "improved" and gate.exit_code(verdicts) == 0


def test_latency_is_not_gated_across_different_machines():
    verdicts = gate.gate(side(seed=1), side(seed=2, scale=2.0, machine_id="feedfacecafe"), CONFIG)
    v = verdict(verdicts)
    assert v.decision == "not gated" and "machine_id differs" in v.why and not v.fails and v.undecided
    assert verdict(verdicts, "mem_peak_bytes").decision == "pass"  # memory still gated
    assert gate.exit_code(verdicts) == 3
    lenient = gate.Config(gate.Rules(not_gated="report"))
    assert (
        gate.exit_code(gate.gate(side(seed=1), side(seed=2, scale=2.0, machine_id="feedfacecafe"), lenient))
        == 0
    )


def test_memory_regression_and_improvement_both_fail():
    bigger = read_report(SMALL)
    bigger.loc[0, "mem_peak_bytes"] += 4096
    v = verdict(gate.gate(side(), side(frame=bigger), CONFIG), "mem_peak_bytes")
    assert v.decision == "regression" and v.why == "+4096 bytes" and v.fails
    smaller = read_report(SMALL)
    smaller.loc[0, "mem_peak_bytes"] -= 512
    v = verdict(gate.gate(side(), side(frame=smaller), CONFIG), "mem_peak_bytes")
    assert v.decision == "improved" and "update the baseline" in v.why and v.fails
    tolerant = gate.Config(gate.Rules(memory_slack_bytes=1024))
    assert verdict(gate.gate(side(), side(frame=smaller), tolerant), "mem_peak_bytes").decision == "pass"


def test_memory_is_not_gated_across_torch_versions():
    verdicts = gate.gate(side(), side(torch_version="2.14.0"), CONFIG)
    v = verdict(verdicts, "mem_peak_bytes")
    assert v.decision == "not gated" and not v.fails and v.undecided and gate.exit_code(verdicts) == 3
    same_release = gate.gate(side(), side(torch_version="2.13.0"), CONFIG)  # the fixture has 2.13.0+cpu
    assert verdict(same_release, "mem_peak_bytes").decision == "pass"
    # ... on the CPU only: the fixture's CUDA row needs the exact build, so the gate cannot decide it
    cuda = [v for v in same_release if v.undecided]
    assert {v.case for v in cuda} == {"inference-mlp-cuda-b32-bfloat16-no_grad"} and gate.exit_code(
        same_release
    ) == 3


def test_cases_on_one_side_only_are_listed():
    fewer = read_report(SMALL)
    fewer = fewer[fewer["model"] != "transformer"]
    verdicts = gate.gate(side(), side(frame=fewer), CONFIG)
    missing = [v for v in verdicts if v.decision == "missing"]
    # the fixture's transformer no_grad case failed in the baseline: its absence loses nothing
    assert [(v.case, v.outcome) for v in missing] == [
        ("inference-transformer-cpu-b32-grad", "failing"),
        ("inference-transformer-cpu-b32-no_grad", "cleared"),
    ]
    assert "ok in the baseline, absent from the candidate" in missing[0].why


def test_no_case_in_common_is_bad_input():
    other = read_report(SMALL)
    other["model"] = "else"
    with pytest.raises(UserError, match="no case in common"):
        gate.gate(side(), side(frame=other), CONFIG)


def test_rules_per_case_pattern_from_pyproject(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        "[tool.bench_lib.gate]\nlatency_threshold = 0.2\n\n"
        '[[tool.bench_lib.gate.rules]]\nmatch = "inference-mlp-*"\nlatency_threshold = 0.05\n\n'
        '[[tool.bench_lib.gate.rules]]\nmatch = "finetune-*"\nlatency = "report"\n'
    )
    config = gate.load_config(pyproject)
    assert config.rules_for(LABEL).latency_threshold == 0.05
    assert config.rules_for("inference-transformer-cpu-b32-grad").latency_threshold == 0.2
    assert config.rules_for("finetune-mlp-cpu-b32-adamw-full").latency == "report"
    verdicts = gate.gate(side(seed=1), side(seed=2, scale=1.3), config)
    assert verdict(verdicts).decision == "regression"
    ft = verdict(verdicts, case="finetune-mlp-cpu-b32-adamw-full")
    assert ft.decision == "regression" and not ft.fails and "report-only" in ft.why
    assert gate.load_config(pyproject, {"latency_threshold": 0.5}).default.latency_threshold == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tool.bench_lib.gate]\nthreshold = 1\n", "unknown settings"),
        ("[tool.bench_lib.gate]\nalpha = 2\n", "0 < alpha < 1"),
        ("[tool.bench_lib.gate]\nlatency = 'maybe'\n", "'gate' or 'report'"),
        ("[[tool.bench_lib.gate.rules]]\nalpha = 0.1\n", "needs a `match`"),
        ("[tool.bench_lib.gate\n", "not valid TOML"),
    ],
)
def test_bad_configuration(tmp_path, text, message):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(text)
    with pytest.raises(UserError, match=message):
        gate.load_config(pyproject)


def write_run(folder: Path, run: str, scale: float, seed: int) -> None:
    """A report and its samples file: 5 processes x 20 rounds per case."""
    folder.mkdir(exist_ok=True)
    frame = read_report(SMALL)
    frame["run_id"] = run
    frame.to_csv(folder / f"{run}.csv", index=False)
    rng = np.random.default_rng(seed)
    rows = []
    for _, row in frame[frame["status"] == "ok"].iterrows():
        for proc in range(5):
            for r in range(20):
                value = row["latency_ms_median"] * scale * (1 + 0.01 * rng.standard_normal())
                rows.append({**{k: row[k] for k in gate.KEY_FIELDS}, "run_id": run, "process": proc,
                             "round": r, "latency_ms": value, "host_latency_ms": value})  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / f"{run}.samples.csv", index=False)


def test_cli_gates_folders_of_runs_and_writes_md_and_json(tmp_path, capsys):
    for i in range(5):
        write_run(tmp_path / "base", f"b{i}", 1.0, i)
        write_run(tmp_path / "cand", f"c{i}", 1.3, 100 + i)
    md, js = tmp_path / "gate.md", tmp_path / "gate.json"
    code = main(["gate", str(tmp_path / "base"), str(tmp_path / "cand"), "--md", str(md), "--json", str(js),
                 "--config", "none"])  # fmt: skip
    assert code == 1
    assert "FAIL" in capsys.readouterr().out
    data = json.loads(js.read_text())
    assert data["exit_code"] == 1 and any(v["decision"] == "regression" for v in data["verdicts"])
    assert md.read_text().startswith("# bench_lib gate")
    js.unlink()  # --json alone writes it too
    assert main(["gate", str(tmp_path / "base"), str(tmp_path / "cand"), "--json", str(js),
                 "--config", "none"]) == 1  # fmt: skip
    assert json.loads(js.read_text())["exit_code"] == 1
    # a single run per side cannot show significance: +30% is undecided (exit 3), never OK
    assert (
        main(
            ["gate", str(tmp_path / "base" / "b0.csv"), str(tmp_path / "cand" / "c0.csv"), "--config", "none"]
        )
        == 3
    )
    assert "gate: UNDECIDED (exit 3)" in capsys.readouterr().out.splitlines()[-1]
    assert (
        main(["gate", str(tmp_path / "base"), str(tmp_path / "cand"), "--only", "memory", "--config", "none"])
        == 0
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["gate", "missing.csv", "also.csv"], "no such file"),
        (["gate", str(SMALL)], "the following arguments are required: candidate"),
        (["gate", str(SMALL), str(SMALL), "--unit", "round"], "invalid choice"),
        # a mistyped --config must not gate with the defaults unseen
        (
            ["gate", str(SMALL), str(SMALL), "--config", "pyproject.tmol"],
            "--config pyproject.tmol: no such file",
        ),
        (["gate", str(SMALL), str(SMALL), "--config", "tests"], "--config tests: a folder"),
    ],
)
def test_cli_bad_input_exits_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_truncated_samples_file_is_refused(tmp_path, capsys):
    write_run(tmp_path / "base", "b0", 1.0, 0)
    samples = tmp_path / "base" / "b0.samples.csv"
    samples.write_text(samples.read_text()[:-40])  # the last row cut off mid-way
    assert main(["gate", str(tmp_path / "base" / "b0.csv"), str(tmp_path / "base" / "b0.csv")]) == 2
    err = capsys.readouterr().err
    assert (
        "b0.samples.csv: line" in err
        and "a truncated or damaged samples file" in err
        and err.count("\n") == 1
    )


def test_a_samples_file_cut_inside_its_last_value_is_refused(tmp_path, capsys):
    # as many fields as the header: only the missing line end tells a cut `0.12` from `0.1234`
    write_run(tmp_path / "base", "b0", 1.0, 0)
    samples = tmp_path / "base" / "b0.samples.csv"
    samples.write_text(samples.read_text()[:-3])
    assert main(["gate", str(tmp_path / "base" / "b0.csv"), str(tmp_path / "base" / "b0.csv")]) == 2
    err = capsys.readouterr().err
    assert "b0.samples.csv: the last line has no line end: a truncated samples file" in err, err
    assert err.count("\n") == 1
    samples.write_text("a,b\n1,2")  # not a samples file at all: that comes first
    assert main(["gate", str(tmp_path / "base" / "b0.csv"), str(tmp_path / "base" / "b0.csv")]) == 2
    assert "b0.samples.csv: missing columns" in capsys.readouterr().err


def test_the_change_interval_is_welchs_t_on_log_medians_checked_by_hand():
    import math

    from bench_lib.gate import change_interval

    base, cand = [10.0, 11.0, 10.5], [12.0, 12.5, 11.5]
    low, high = change_interval(base, cand)
    from scipy.stats import t

    # by hand: log means 2.350618 and 2.484328, variances of the means 0.00075716 and
    # 0.00057945, se 0.036560, Welch dof 3.9305
    diff, h = 2.484328 - 2.350618, t.ppf(0.975, 3.9305) * 0.036560
    assert (low, high) == pytest.approx((math.expm1(diff - h), math.expm1(diff + h)), abs=2e-4)
    assert low < 12.0 / 10.5 - 1 < high
    assert change_interval([10.0], cand) == (None, None)  # one run: no interval


def test_a_closed_standard_output_keeps_the_verdict_files(tmp_path):
    import subprocess
    import sys

    md, js = tmp_path / "v.md", tmp_path / "v.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench_lib", "gate", str(SMALL), str(SMALL), "--config", "none",
         "--md", str(md), "--json", str(js)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the gate prints
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err  # not 0-3: the gate's own codes
    assert json.loads(js.read_text())["exit_code"] in (0, 3) and md.read_text().startswith("# bench_lib gate")
