"""The real suite, run as a user runs it: `pytest benchmarks/` in a subprocess, tiny profile."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench_lib.records.cases import KEY_FIELDS
from bench_lib.records.schema import read_modules, read_report

ROOT = Path(__file__).resolve().parent.parent
MEMORY = ["mem_peak_bytes", "mem_saved_for_backward_bytes"]
FINETUNE_MEMORY = [
    "mem_params_bytes",
    "mem_grads_bytes",
    "mem_optimizer_state_bytes",
    "mem_activations_bytes",
]

pytestmark = pytest.mark.slow


def run_suite(results_dir, *args, env=None):
    cmd = [
        sys.executable, "-m", "pytest", "benchmarks/", "-p", "no:cacheprovider",
        "--bench-profile=tiny", f"--bench-results-dir={results_dir}", "--bench-devices=cpu", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    reports = []
    for i in range(2):
        out = tmp_path_factory.mktemp(f"run{i}")
        proc = run_suite(out)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        reports.append((out, proc))
    return reports


def test_suite_writes_a_valid_report_with_every_case(two_runs):
    out, proc = two_runs[0]
    report = read_report(out / "latest.csv")
    assert set(report["status"]) == {"ok"}
    assert set(report["suite"]) == {"ruler", "inference", "finetune"}
    ruler = report[report["suite"] == "ruler"]
    assert sorted(ruler["mode"]) == ["copy", "matmul", "tiny_ops"] and (ruler["latency_ms_median"] > 0).all()
    frame = report[report["suite"] == "inference"]
    assert len(frame) == 4 * 2 * 3  # models x batch sizes x modes, CPU only
    assert set(frame["mode"]) == {"grad", "no_grad", "inference_mode"}
    assert (frame["rounds"] == 5).all() and (frame["latency_ms_median"] > 0).all()
    grad = frame[frame["mode"] == "grad"]
    assert (grad["latency_ratio_to_grad"] == 1.0).all() and (grad["mem_saved_for_backward_bytes"] > 0).all()
    others = frame[frame["mode"] != "grad"]
    assert (others["mem_saved_for_backward_bytes"] == 0).all()
    assert (frame["torch_threads"] == 1).all() and frame["machine_id"].nunique() == 1
    runs = [p for p in out.iterdir() if p.name.endswith(".csv") and not p.name.startswith("latest")]
    assert len(runs) == 3  # <timestamp>_<machine id>.csv, its .samples.csv and .modules.csv
    samples = pd.read_csv(out / "latest.samples.csv")
    finetune = report[report["suite"] == "finetune"]
    assert len(samples) == (len(frame) + len(ruler)) * 5 + len(finetune) * 3  # tiny: 5 and 3 rounds
    assert (
        "bench_lib summary" in proc.stdout
        and "inference / grad" in proc.stdout
        and "Findings:" in proc.stdout
    )


def test_memory_columns_are_identical_between_runs(two_runs):
    frames = [
        read_report(out / "latest.csv").set_index(["model", "batch_size", "mode"]) for out, _ in two_runs
    ]
    pd.testing.assert_frame_equal(frames[0][MEMORY].sort_index(), frames[1][MEMORY].sort_index())


def test_module_rows_are_identical_between_runs_and_sum_to_each_case(two_runs):
    key = list(KEY_FIELDS)
    modules = [read_modules(out / "latest.csv").drop(columns="run_id") for out, _ in two_runs]
    pd.testing.assert_frame_equal(modules[0], modules[1])
    report = read_report(two_runs[0][0] / "latest.csv")
    eager = report[(report["suite"] != "ruler") & (report["compile"] == "")].set_index(key)
    sums = modules[0].groupby(key)[["mem_peak_bytes", "mem_saved_for_backward_bytes"]].sum()
    assert len(sums) == len(eager)  # every eager case has its rows
    assert (sums["mem_peak_bytes"] == eager.loc[sums.index, "mem_peak_bytes"]).all()
    saved = eager["mem_saved_for_backward_bytes"].fillna(eager["mem_activations_bytes"])
    assert (sums["mem_saved_for_backward_bytes"] == saved.loc[sums.index]).all()


def test_each_run_goes_into_the_history_and_show_lists_both(two_runs, capsys):
    from bench_lib.cli import main

    (first, proc), (second, _) = two_runs
    assert f"history: run added in {first / 'history.sqlite'}" in proc.stdout
    db = str(first / "history.sqlite")  # each run has its own results folder here: bring them together
    assert main(["history", "add", str(second / "latest.csv"), "--db", db]) == 0
    capsys.readouterr()
    assert main(["history", "show", "inference-mlp-cpu-b1-grad", "--db", db]) == 0
    assert ": 2 runs" in capsys.readouterr().out


def test_selecting_a_subset_with_k(tmp_path):
    proc = run_suite(tmp_path, "-k", "inference and transformer and no_grad")
    assert proc.returncode == 0, proc.stdout[-3000:]
    frame = read_report(tmp_path / "latest.csv")
    assert set(frame["model"]) == {"transformer"} and set(frame["mode"]) == {"no_grad"}
    assert frame["latency_ratio_to_grad"].notna().all()  # grad was measured as the reference


@pytest.mark.parametrize(
    ("option", "message"),
    [("--bench-profile=huge", "unknown profile 'huge'"), ("--bench-models=resnet", "unknown model 'resnet'")],
)
def test_bad_options_give_one_error_line_and_no_traceback(tmp_path, option, message):
    proc = run_suite(tmp_path, option)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "latest.csv").exists()


def test_cuda_cases_are_skipped_with_a_reason_without_a_gpu(tmp_path):
    proc = run_suite(tmp_path, "--bench-devices=cuda", "-rs")
    if "CUDA not available" not in proc.stdout:
        pytest.skip("this machine has CUDA")
    assert proc.returncode == 0 and "skipped" in proc.stdout


def test_ctrl_c_keeps_the_rows_already_measured(tmp_path):
    """Interrupt a run in the middle of its second group: the first group's rows survive."""
    cmd = [
        sys.executable, "-m", "pytest", "benchmarks/", "-p", "no:cacheprovider", "-k", "inference",
        "--bench-profile=default", "--bench-models=cnn", "--bench-devices=cpu", f"--bench-results-dir={tmp_path}",
    ]  # fmt: skip
    # A background job of a non-interactive shell (how CI may start us) inherits SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler: give the run the default, as a terminal does.
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob("2*_*.csv")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-2000:]  # pytest's "interrupted"
    frame = read_report(tmp_path / "latest.csv")
    assert 1 <= len(frame) < 6 and set(frame["model"]) == {"cnn"}
    assert (frame[frame["status"] == "ok"]["batch_size"] == 1).all()


def test_memory_gate_catches_an_injected_tensor(tmp_path):
    """What CI's `make gate-memory` does, with 4 KiB injected into the MLP's forward."""
    proc = run_suite(tmp_path, "-k", "inference", "--bench-models=mlp", "--bench-inject=mlp:mem=4096")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (read_report(tmp_path / "latest.csv")["inject"] == "mlp:mem=4096").all()
    baseline = ROOT / "results" / "baseline" / "tiny-cpu.csv"
    gate = subprocess.run(
        [sys.executable, "-m", "bench_lib", "gate", str(baseline), str(tmp_path / "latest.csv"), "--only", "memory"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert gate.returncode == 1, gate.stdout
    assert gate.stdout.count("+4096 bytes") == 6  # mem_peak_bytes of 3 modes x 2 batch sizes


def test_a_results_folder_it_cannot_write_stops_the_run_before_it_measures(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_suite(blocker / "results")  # its parent is a file
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"error: cannot write reports in {blocker / 'results'}" in proc.stdout + proc.stderr
    assert "passed" not in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    cli = subprocess.run(
        [sys.executable, "-m", "bench_lib", "run", "--profile", "tiny", "--model", "mlp", "--devices", "cpu",
         "--out", str(blocker / "r.csv")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert (
        cli.returncode == 2
        and cli.stderr == f"error: cannot write reports in {blocker}: a file, not a folder\n"
    )
    assert "[1/" not in cli.stdout  # nothing measured
    folder = subprocess.run(
        [sys.executable, "-m", "bench_lib", "run", "--profile", "tiny", "--model", "mlp", "--devices", "cpu",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert (
        folder.returncode == 2
        and folder.stderr == f"error: {tmp_path}: a folder; the report needs a file name\n"
    )
    assert "[1/" not in folder.stdout


def test_run_into_a_closed_pipe_keeps_what_it_measured(tmp_path):
    """`run | head -1`: the reader goes after the first line; the run stops at its next line of
    progress, says so on stderr, and the cases measured are in the report."""
    out = tmp_path / "r.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench_lib", "run", "--profile", "tiny", "--model", "mlp", "--devices", "cpu",
         "--suites", "inference", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141, err
    assert "cases on" in first and "Traceback" not in err
    kept = read_report(out)
    assert err.strip() == f"stopped: standard output was closed; {len(kept)} cases kept in {out}"
    assert len(kept) >= 1 and set(kept["status"]) == {"ok"}


def test_each_suite_is_widened_by_its_own_spread_between_runs(tmp_path):
    """`--ci-run-sd inference=...,finetune=...`: each suite's rows say their own value and their
    ratio intervals are at least that wide; a misspelt suite is one line and exit 2."""
    out = tmp_path / "r.csv"

    def run(setting):
        return subprocess.run(
            [sys.executable, "-m", "bench_lib", "run", "--profile", "tiny", "--model", "mlp", "--devices", "cpu",
             "--suites", "inference,finetune", "--optimizers", "sgd", "--processes", "2",
             "--ci-run-sd", setting, "--out", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    proc = run("inference=0.02,finetune=0.03")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = read_report(out)
    for suite, sd, figure in (
        ("inference", 0.02, "latency_ratio_to_grad"),
        ("finetune", 0.03, "latency_ratio_to_full"),
    ):
        rows = report[report["suite"] == suite]
        assert len(rows) and (rows["ci_run_sd"] == sd).all(), suite
        ratios = rows[rows[f"{figure}_ci_high"] > rows[f"{figure}_ci_low"]]
        assert len(ratios), suite
        assert (np.log(ratios[f"{figure}_ci_high"] / ratios[figure]) >= 1.959964 * sd - 1e-9).all(), suite
    bad = run("inferense=0.02")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "ci_run_sd: unknown suite 'inferense' in 'inferense=0.02' (known: inference, finetune; or one number "
            "for every suite)"
        )
    ), bad.stderr


def test_the_report_says_what_its_ratio_intervals_were_widened_by(tmp_path):
    """`ci_run_sd` on every row: what `precision` takes out to find what the processes measured."""
    out = tmp_path / "r.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "bench_lib", "run", "--profile", "tiny", "--model", "mlp", "--devices", "cpu",
         "--suites", "inference", "--processes", "2", "--ci-run-sd", "0.02", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = read_report(out)
    assert (report["ci_run_sd"] == 0.02).all() and (report["processes"] == 2).all()
    ratios = report[report["mode"] != "grad"]
    half = np.log(ratios["latency_ratio_to_grad_ci_high"] / ratios["latency_ratio_to_grad"])
    assert (half >= 1.959964 * 0.02 - 1e-9).all()  # at least the widening, in quadrature with the rest
