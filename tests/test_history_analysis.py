"""Change points, `history regressions|report|gate` and the exporters (SQLite; the store itself is
tested on both databases in test_history_store.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from history_data import TEMPLATE, write_run

from bench_lib.cli import main
from bench_lib.errors import UserError
from bench_lib.history.changepoints import Point, Series, StepRules, detect, detect_all
from bench_lib.history.export import to_bmf, to_github_action_benchmark

T0 = datetime(2026, 1, 1)


def series(values, metric="latency_ms_min", label="inference-mlp-cpu-b1-grad", fp="fp") -> Series:
    points = tuple(
        Point(f"{i:04x}{0:036x}", T0 + timedelta(hours=i), float(v), 1) for i, v in enumerate(values)
    )
    return Series(fp, "host", label, metric, points)


def noisy(
    n: int, seed: int, sigma: float = 0.02, step_at: int | None = None, factor: float = 1.10
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.exp(rng.normal(0, sigma, n))
    if step_at is not None:
        values[step_at:] *= factor
    return values


def test_a_memory_step_is_found_exactly_at_its_commit():
    values = [8192] * 10 + [8192 + 4096] * 5 + [8192] * 3
    steps = detect(series(values, "mem_peak_bytes"))
    assert [(s.index, s.delta, s.p_value, s.regression) for s in steps] == [
        (10, 4096, None, True),
        (15, -4096, None, False),
    ]
    assert steps[0].bisect == f"{9:04x}{0:08x}..{10:04x}{0:08x}"


@pytest.mark.parametrize("seed", range(5))
def test_a_10_percent_latency_step_is_found_within_one_commit(seed):
    steps = detect(series(noisy(40, seed, step_at=25)))
    assert len(steps) == 1 and abs(steps[0].index - 25) <= 1
    assert 0.07 < steps[0].change < 0.13 and steps[0].p_value < 0.001 and steps[0].regression


@pytest.mark.parametrize("seed", range(20))
def test_unchanged_noise_with_bursts_of_load_has_no_step(seed):
    values = noisy(40, seed, sigma=0.03)
    rng = np.random.default_rng(100 + seed)
    for start in rng.choice(35, 2, replace=False):  # two bursts of load, 1-3 runs each, 1.5-3x slower
        values[start : start + rng.integers(1, 4)] *= rng.uniform(1.5, 3.0)
    assert detect(series(values)) == []


def test_too_short_a_history_has_no_latency_step():
    assert detect(series([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])) == []  # min_size 4 on either side


def test_steps_of_most_cases_at_once_are_machine_wide():
    labels = [f"inference-m{i}-cpu-b1-grad" for i in range(6)]
    wide = [series(noisy(30, i, step_at=20, factor=1.5), label=lab) for i, lab in enumerate(labels)]
    steps = detect_all(wide)
    assert len(steps) == 6 and all(s.machine_wide and not s.regression for s in steps)
    one = [
        series(noisy(30, i, step_at=20, factor=1.5 if i == 0 else 1.0), label=lab)
        for i, lab in enumerate(labels)
    ]
    steps = detect_all(one)
    assert [(s.label, s.machine_wide, s.regression) for s in steps] == [(labels[0], False, True)]


def test_step_rules_are_validated():
    with pytest.raises(UserError, match="0 < alpha < 1"):
        StepRules(alpha=2)


@pytest.fixture(scope="module")
def stepped(tmp_path_factory) -> tuple[Path, list[Path]]:
    """24 commits on main; from commit 16 on, the MLP's cases are 25% slower and peak 4 KiB higher."""
    folder = tmp_path_factory.mktemp("stepped")
    paths = [
        write_run(
            folder, i, scale=1.25 if i >= 16 else 1.0, mem_extra=4096 if i >= 16 else 0, models=("mlp",)
        )
        for i in range(24)
    ]
    db = folder / "history.sqlite"
    assert main(["history", "add", *map(str, paths), "--db", str(db), "--branch", "main"]) == 0
    return db, paths


def test_regressions_lists_the_steps_newest_first_with_the_range_to_bisect(stepped, capsys):
    db, _ = stepped
    capsys.readouterr()
    assert main(["history", "regressions", "--db", str(db), "--branch", "main"]) == 0
    out = capsys.readouterr().out
    bisect = f"git log {15:04x}{0:08x}..{16:04x}{0:08x}"
    lines = [line for line in out.splitlines() if "bisect" in line]
    memory = [line for line in lines if "mem_peak_bytes +4096 bytes" in line]
    latency = [line for line in lines if "latency_ms_min +" in line]
    assert memory and all(bisect in line for line in memory)
    assert len(latency) == 6 and all(bisect in line and "-mlp-" in line for line in latency)
    assert "machine-wide" not in out and out.startswith("12 regressions on main in ")


def test_show_and_the_html_and_markdown_reports(stepped, tmp_path, capsys):
    db, _ = stepped
    assert main(["history", "show", "mlp-cpu-b32-grad", "--db", str(db), "--last", "5"]) == 0
    out = capsys.readouterr().out
    assert ": 5 runs" in out and "0.5" in out
    html = tmp_path / "history.html"
    assert main(["history", "report", "--db", str(db), "--format", "html", "--out", str(html)]) == 0
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 10 and "inference-mlp-cpu-b32-grad" in page
    md = tmp_path / "history.md"
    assert (
        main(["history", "report", "inference-mlp", "--db", str(db), "--format", "md", "--out", str(md)]) == 0
    )
    assert "![inference-mlp-cpu-b32-grad](history_plots/inference-mlp-cpu-b32-grad.png)" in md.read_text()
    assert (tmp_path / "history_plots" / "inference-mlp-cpu-b32-grad.png").stat().st_size > 1000


def test_show_marks_the_steps_without_importing_scipy_ruptures_or_pandas(stepped):
    """What keeps `history show` under a second: its change points (latency steps here, so the
    segmentation and the Mann-Whitney test both run) need none of these 0.3-0.9 s imports."""
    import subprocess
    import sys

    db, _ = stepped
    code = (
        "import contextlib, io, sys; from bench_lib.cli import main; out = io.StringIO()\n"
        f"with contextlib.redirect_stdout(out): main(['history', 'show', 'mlp-cpu-b32-grad', '--db', {str(db)!r}])\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'scipy', 'ruptures', 'pandas', 'torch', 'matplotlib'}\n"
        "print('step: latency_ms_min +' in out.getvalue(), sorted(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True []"


def gate(capsys, db: Path, candidate: Path, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["history", "gate", str(candidate), "--db", str(db), "--branch", "main", *extra])
    return code, capsys.readouterr().out


def test_history_gate_exit_codes(stepped, tmp_path, capsys):
    db, paths = stepped
    same = write_run(tmp_path, 100, scale=1.25, mem_extra=4096, models=("mlp",))
    code, out = gate(capsys, db, same, "--last", "8")
    assert code == 0, out
    assert "8 run(s) of fingerprint" in out and "gate: OK (exit 0)" in out
    slower = write_run(tmp_path, 101, scale=1.25 * 1.4, mem_extra=4096, models=("mlp",))
    code, out = gate(capsys, db, slower, "--last", "8")
    assert code == 1 and "latency regression" in out
    bigger = write_run(tmp_path, 102, scale=1.25, mem_extra=8192, models=("mlp",))
    code, out = gate(capsys, db, bigger, "--last", "8")
    assert code == 1 and "memory grew" in out
    code, out = gate(capsys, db, slower, "--last", "1")  # one history run: too few to decide a slowdown
    assert code == 3 and "too few runs" in out
    elsewhere = write_run(tmp_path, 103, machine="ffffffffffff")
    code, out = gate(capsys, db, elsewhere)
    assert code == 3 and "no history" in out
    code, _ = gate(capsys, db, paths[-1], "--last", "8")  # a stored run is not gated against itself
    assert code == 0


def test_export_bencher_and_github_action_benchmark(tmp_path, capsys):
    bmf = to_bmf(TEMPLATE)
    grad = bmf["inference-mlp-cpu-b32-grad"]
    assert grad["latency"]["value"] == pytest.approx(0.5e6) and grad["latency"]["lower_value"] < 0.5e6
    assert grad["mem-peak-bytes"] == {"value": 262144.0} and "throughput" in grad
    gab = to_github_action_benchmark(TEMPLATE)
    assert {"name": "inference-mlp-cpu-b32-grad mem_peak_bytes", "unit": "bytes", "value": 262144} in gab
    latency = next(e for e in gab if e["name"] == "inference-mlp-cpu-b32-grad latency")
    assert latency["unit"] == "ms" and latency["value"] == 0.5 and latency["range"].startswith("± ")
    out = tmp_path / "bmf.json"
    assert main(["export", str(TEMPLATE), "--format", "bmf", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(json.dumps(bmf))


def test_export_of_several_runs_is_one_line_and_exit_2(tmp_path, capsys):
    a, b = write_run(tmp_path, 1), write_run(tmp_path, 2)
    both = tmp_path / "both.csv"
    lines_b = b.read_text().splitlines()
    both.write_text(a.read_text() + "\n".join(lines_b[1:]) + "\n")
    assert main(["export", str(both), "--format", "github-action-benchmark"]) == 2
    assert "export one run at a time" in capsys.readouterr().err


def test_removing_a_run_that_is_not_stored_removes_nothing(tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    a, b = write_run(tmp_path, 1), write_run(tmp_path, 2)
    assert main(["history", "add", str(a), str(b), "--db", str(db)]) == 0
    assert main(["history", "remove", a.stem, "NOPE", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "no run NOPE (nothing removed" in err and err.count("\n") == 1
    assert main(["history", "runs", "--db", str(db)]) == 0
    assert a.stem in capsys.readouterr().out  # the known one stayed too
    assert main(["history", "remove", a.stem, "--db", str(db)]) == 0
    assert capsys.readouterr().out.startswith("removed 1 run(s)")


@pytest.mark.parametrize("argv", [["show", "--last", "0"], ["runs", "--last", "-3"], ["add", "x.csv", "--jobs", "0"],
                                  ["show", "--config", "nope.toml"]])  # fmt: skip
def test_history_counts_and_config_files_are_checked(tmp_path, capsys, argv):
    assert main(["history", *argv, "--db", str(tmp_path / "h.sqlite")]) == 2
    err = capsys.readouterr().err
    assert ("must be a whole number >= 1" in err or "nope.toml: no such file" in err) and err.count("\n") == 1
    assert not (tmp_path / "h.sqlite").exists()


def test_a_database_path_under_a_file_is_one_line(tmp_path, capsys):
    report = write_run(tmp_path, 1)
    assert main(["history", "add", str(report), "--db", f"{report}/h.sqlite"]) == 2
    assert capsys.readouterr().err == f"error: {report}: a file, not a folder\n"


def test_branch_comes_from_the_option_then_the_environment(tmp_path, monkeypatch):
    from bench_lib.history.ingest import branch_resolver

    for variable in ("BENCH_BRANCH", "GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_BRANCH"):
        monkeypatch.delenv(variable, raising=False)
    assert branch_resolver("dev")("abc") == "dev"
    monkeypatch.setenv("GITHUB_REF_NAME", "main")
    assert branch_resolver(None)("abc") == "main"
    monkeypatch.setenv("BENCH_BRANCH", "release")
    assert branch_resolver(None)("abc") == "release"
    monkeypatch.delenv("BENCH_BRANCH")
    monkeypatch.delenv("GITHUB_REF_NAME")
    assert branch_resolver(None, cwd=tmp_path)("abc") == ""  # not a checkout: unknown


def test_the_audit_replicates_real_runs_and_rejects_what_is_not_a_report(tmp_path, capsys):
    from bench_lib.history.audit import main as audit

    runs = tmp_path / "runs"
    for i in range(2):
        write_run(runs, i)
    (runs / "notes.csv").write_text("some,table\n1,2,3,4\n")  # not a report: one line, exit 2
    assert audit([str(runs), "--replicate", "5", "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "notes.csv: not a report" in err and "\n" not in err
    (runs / "notes.csv").unlink()
    assert audit([str(runs), "--replicate", "5", "--to", str(tmp_path / "out")]) == 0
    written = sorted((tmp_path / "out").glob("*.csv"))
    assert len([p for p in written if not p.name.endswith(".samples.csv")]) == 5
