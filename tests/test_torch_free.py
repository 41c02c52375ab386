"""The analysis side (read, validate, report, compare, gate) never imports torch, so a CI runner
can gate two CSV files without it."""

import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data"

SCRIPT = """
import sys
from bench_lib.cli import main
from bench_lib import load_results
from bench_lib import read_report
from bench_lib.analysis import compare
report, out = sys.argv[1], sys.argv[2]
assert main(["report", report]) == 0
assert main(["report", report, "--format", "md"]) == 0
assert main(["report", report, "--format", "html", "--out", out + "/r.html"]) == 0
assert main(["compare", report, report, "--format", "md"]) == 0
assert main(["gate", report, report, "--config", "none"]) in (0, 3)
load_results([report])
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("TORCH MODULES:", loaded)
sys.exit(1 if loaded else 0)
"""


def test_reading_reporting_comparing_and_gating_do_not_import_torch(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(DATA / "small.csv"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "TORCH MODULES: []" in proc.stdout


def test_the_check_itself_sees_torch_when_it_is_imported(tmp_path):
    """The same script fails once anything on its path imports torch."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import bench_lib.measure.modes\n" + SCRIPT,
            str(DATA / "small.csv"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "TORCH MODULES: ['torch'" in proc.stdout
