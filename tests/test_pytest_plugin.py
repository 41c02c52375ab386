"""The pytest plugin in a user's own repository: registered by the installed package's `pytest11`
entry point (no conftest), its fixtures and `--bench-*` options work on a user's benchmark file."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench_lib.records.schema import read_report

pytestmark = pytest.mark.slow

USER_BENCHMARK = """
def test_my_inference(bench_measure, inference_case):
    result = bench_measure(inference_case)
    assert result.case.model == "mlp"


def test_my_inference_again(bench_measure, inference_case):  # the same cases: one row each
    assert bench_measure(inference_case).ok
"""


def test_a_user_repository_uses_the_plugin_without_a_conftest(tmp_path):
    from importlib.metadata import entry_points

    if not any(ep.value == "bench_lib.pytest_plugin" for ep in entry_points(group="pytest11")):
        pytest.skip("bench_lib is not installed as a package here (no pytest11 entry point)")
    repo = tmp_path / "their_repo"
    repo.mkdir()
    (repo / "test_mine.py").write_text(USER_BENCHMARK)
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
           "--bench-profile=tiny", "--bench-models=mlp", "--bench-devices=cpu", "--bench-modes=grad,no_grad",
           "--bench-processes=2", f"--bench-results-dir={results}", "test_mine.py"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "8 passed" in proc.stdout and "bench_lib summary" in proc.stdout
    # two processes: the ratios have intervals, and the summary says how precise they are (fixed
    # effort aimed at no target, so the line names none)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("precision: "))
    assert (
        line.startswith("precision: 2 ratios, 95% intervals +-")
        and "groups stopped: fixed 2 (2 processes)" in line
    )
    assert "target" not in line
    frame = read_report(results / "latest.csv")
    assert sorted(frame["mode"].unique()) == ["grad", "no_grad"] and len(frame) == 4


def test_a_user_repository_with_bad_options_gets_one_line(tmp_path):
    (tmp_path / "test_mine.py").write_text(USER_BENCHMARK)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench_lib.pytest_plugin",
           "--bench-profile=huge", "test_mine.py"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "unknown profile 'huge'" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_an_unrelated_test_run_does_not_import_torch(tmp_path):
    """The plugin is active in every pytest run where bench_lib is installed: it must cost nothing
    when no benchmark uses it."""
    (tmp_path / "test_plain.py").write_text(
        "import sys\n\ndef test_plain():\n    assert 'torch' not in sys.modules\n"
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench_lib.pytest_plugin",
           "-p", "no:benchmark", "test_plain.py"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_console_script_is_installed():
    script = shutil.which("bench-lib", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("bench_lib is not installed as a package here (no console script)")
    proc = subprocess.run([script, "gate", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "3  undecided" in proc.stdout
