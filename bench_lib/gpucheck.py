"""`make gpu-check OUT=folder`: the GPU proof, in one command, for a GPU machine.

From a plain checkout, with an existing Python that has torch, pandas, pytest(-benchmark),
psutil and nvidia-ml-py, installing nothing (GPU machines often have no network), it:

1. runs the CUDA-only tests (`tests/test_cuda.py`);
2. runs a small benchmark (profile `gpu`: mlp, cnn, transformer; fp32, bf16 and fp16 autocast;
   inference and fine-tuning), then the inference part once more;
3. checks the suite's GPU targets: the device time of a large matmul measured by the suite
   agrees with `torch.utils.benchmark.Timer` within 5%; `max_memory_allocated` is identical
   across the two runs; energy per item is reported for every CUDA case (where NVML can);
4. writes `<gpu>.csv` (+ `.samples.csv`), `<gpu>.html` (+ `.md` where tabulate is installed),
   `checks.json` and `gpucheck.log` to OUT.

Exit 0 when every check passed, 1 when one failed, 2 when there is no GPU (or bad options).
`--device cpu --profile tiny` runs the same pipeline on a CPU (what the tests do).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from bench_lib.cases import KEY_FIELDS
from bench_lib.devices import make_device, unavailable_reason
from bench_lib.environment import torch_threads
from bench_lib.schema import read_report, samples_path, write_text_atomic
from bench_lib.timing import Variant, measure_interleaved

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.05


class Log:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)
        write_text_atomic(self.path, "\n".join(self.lines) + "\n")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def matmul_agreement(kind: str, n: int) -> dict:
    """Median device time of an n x n fp32 matmul by the suite's timing (CUDA events, rounds of
    10 calls) and by torch.utils.benchmark.Timer (blocked_autorange), and their ratio."""
    from torch.utils import benchmark

    device = make_device(kind)
    a = torch.randn(n, n, device=device.name)
    b = torch.randn(n, n, device=device.name)
    with torch_threads(1):  # Timer's default, so that a CPU run compares like with like
        timed = measure_interleaved(
            [Variant("matmul", lambda: a @ b)], device, rounds=50, warmup_rounds=5, iterations=10
        )
        timer = benchmark.Timer(stmt="a @ b", globals={"a": a, "b": b}, num_threads=1)
        measurement = timer.blocked_autorange(min_run_time=2.0)
    ours = timed.samples["matmul"].stats().median
    theirs = measurement.median * 1e3
    ratio = ours / theirs
    return {
        "n": n,
        "suite_ms": ours,
        "timer_ms": theirs,
        "ratio": ratio,
        "passed": abs(ratio - 1) <= TOLERANCE,
    }


def memory_identical(first: pd.DataFrame, second: pd.DataFrame) -> dict:
    """The memory columns of the inference cases both runs measured, compared exactly."""
    cols = [c for c in ("mem_peak_bytes", "cuda_max_allocated_bytes") if first[c].notna().any()]
    key = list(KEY_FIELDS)
    a = first[(first["suite"] == "inference") & (first["status"] == "ok")].set_index(key)[cols]
    b = second[(second["suite"] == "inference") & (second["status"] == "ok")].set_index(key)[cols]
    both = a.join(b, lsuffix="_1", rsuffix="_2", how="inner")
    differ = [
        f"{'-'.join(map(str, k))} {c}: {row[c + '_1']} vs {row[c + '_2']}"
        for k, row in both.iterrows()
        for c in cols
        if row[c + "_1"] != row[c + "_2"]
    ]
    return {"columns": cols, "cases": len(both), "differ": differ, "passed": bool(len(both)) and not differ}


def energy_coverage(frame: pd.DataFrame) -> dict:
    cuda = frame[(frame["device"] == "cuda") & (frame["status"] == "ok") & (frame["suite"] != "ruler")]
    with_energy = int(cuda["energy_j_per_item"].notna().sum())
    methods = sorted(set(cuda["energy_method"].dropna()))
    return {"cuda_cases": len(cuda), "with_energy": with_energy, "methods": methods,
            "passed": len(cuda) > 0 and with_energy == len(cuda)}  # fmt: skip


def run_benchmark(
    results: Path, kind: str, args: argparse.Namespace, select: str, log: Log
) -> pd.DataFrame | None:
    cmd = [
        sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
        f"--bench-profile={args.profile}", f"--bench-devices={kind}", f"--bench-dtypes={args.dtypes}",
        f"--bench-results-dir={results}", "-k", select,
    ] + ([f"--bench-models={args.models}"] if args.models else [])  # fmt: skip
    log(f"$ {' '.join(cmd)}")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log(proc.stdout[-6000:] + proc.stderr[-2000:])
    latest = results / "latest.csv"
    return proc.returncode, read_report(latest) if latest.is_file() else None


def write_reports(frame: pd.DataFrame, stem: Path, log: Log) -> None:
    from bench_lib import report

    try:
        write_text_atomic(stem.with_suffix(".html"), report.render_html(frame))
    except ImportError as exc:  # matplotlib missing: the tables without the plots
        log(f"no plots ({exc}); writing the HTML tables only")
        tables = "".join(
            f"<h2>{t}</h2><p>{x}</p>{table.to_html(border=0)}" for t, x, table in report.sections(frame)
        )
        write_text_atomic(stem.with_suffix(".html"), f"<!DOCTYPE html><html><body>{tables}</body></html>")
    try:
        write_text_atomic(stem.with_suffix(".md"), report.render_markdown(frame))
    except ImportError as exc:  # tabulate missing
        log(f"no Markdown report ({exc})")
    log(report.render_console(frame))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench_lib.gpucheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", required=True, help="folder for the CSV, reports and checks")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--profile", default="gpu")
    p.add_argument("--models", default="", help="default: the profile's (mlp, cnn, transformer)")
    p.add_argument("--dtypes", default="float32,bfloat16,float16")
    p.add_argument("--matmul-size", type=int, default=4096)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpucheck.log")
    reason = unavailable_reason(args.device)
    if reason:
        print(f"error: gpu-check needs a GPU: {reason}", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    log(
        f"device: {name}; torch {torch.__version__} (CUDA {torch.version.cuda}); python {sys.version.split()[0]}"
    )
    checks: dict = {"device": name, "torch": torch.__version__}

    tests = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(tests, cwd=ROOT, capture_output=True, text=True)
    log(f"$ {' '.join(tests)}\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
    checks["cuda_tests"] = {"exit_code": proc.returncode, "passed": proc.returncode in (0, 5) if args.device == "cpu"
                            else proc.returncode == 0}  # fmt: skip

    checks["matmul"] = matmul_agreement(args.device, args.matmul_size)
    log(f"matmul {args.matmul_size}: suite {checks['matmul']['suite_ms']:.4f} ms, Timer "
        f"{checks['matmul']['timer_ms']:.4f} ms, ratio {checks['matmul']['ratio']:.4f}")  # fmt: skip

    rc1, first = run_benchmark(out / "run1", args.device, args, "inference or finetune or ruler", log)
    rc2, second = run_benchmark(out / "run2", args.device, args, "inference", log)
    if first is None or second is None:
        checks["benchmark"] = {"passed": False, "why": "a benchmark run wrote no report (see gpucheck.log)"}
    else:
        bad = first[first["status"] != "ok"]
        checks["benchmark"] = {"cases": len(first), "pytest_exit_codes": [rc1, rc2],
                               "not_ok": [f"{r.suite}-{r.model} {r.status}: {r.error}" for r in bad.itertuples()],
                               "passed": bad.empty and rc1 == rc2 == 0}  # fmt: skip
        checks["memory_identical"] = memory_identical(first, second)
        if args.device == "cuda":
            checks["energy"] = energy_coverage(first)
        stem = out / slug(name)
        shutil.copyfile(out / "run1" / "latest.csv", stem.with_suffix(".csv"))
        shutil.copyfile(samples_path(out / "run1" / "latest.csv"), samples_path(stem.with_suffix(".csv")))
        write_reports(first, stem, log)
    write_text_atomic(out / "checks.json", json.dumps(checks, indent=2, default=str))
    failed = [k for k, v in checks.items() if isinstance(v, dict) and not v.get("passed", True)]
    log(f"checks: {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)} (details in checks.json)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
