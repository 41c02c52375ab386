"""`make gpu-check OUT=folder`: the GPU proof, in one command, for a GPU machine.

From a plain checkout, with an existing Python that has torch, pandas, pytest(-benchmark),
psutil and nvidia-ml-py, installing nothing (GPU machines often have no network), it:

0. checks its preconditions (`bench_lib.preflight`; a missing piece is one line, exit 2);
1. `facts`: the device the suite measures (name, UUID, MIG mode, capability), the driver, torch,
   CUDA and the float32/TF32 settings, read in a child process;
2. `matmul`: in a child process, the device time of a large fp32 matmul by the suite's timing
   against `torch.utils.benchmark.Timer`: after a warm-up, alternating blocks of each (same calls
   per round as Timer's blocks), medians of the block medians within 5%, with the GPU's clocks and
   clock-event (throttle) reasons logged around every pair of blocks;
3. `bench-1`: a small benchmark (profile `gpu`: mlp, cnn, transformer at batch 32; fp32, TF32,
   bf16 and fp16; inference, fine-tuning with AdamW, the calibration ruler);
4. `bench-2`: the inference part once more, for the memory check;
5. `cuda-tests`: the CUDA-only tests (`tests/test_cuda.py`).

Then it checks the GPU targets: matmul agreement; every case ok; allocator peaks identical in
both runs; energy on every CUDA case; no other process on the GPU during any CUDA case; float32
cases ran without TF32 and tf32 cases with it. It writes, as it goes, `gpucheck.log`, one log per
step in `steps/`, the benchmark CSVs in `run1/` and `run2/`, and `checks.json` after every step;
at the end `<gpu>.csv` (+ `.samples.csv`), `<gpu>.html` (+ `.md` where tabulate is installed),
`<gpu>.txt` (the console report), and a short table of the checks on stdout.

This process never uses CUDA itself (only NVML), so that NVML never lists it beside the
benchmark's workers; every step runs in its own process, with a share of `--time-limit`, so a
hang costs its step, not the run. Exit 0 when every check passed, 1 when one failed, 2 when the
machine lacks something (no GPU, a package missing or too old).
`--device cpu` runs the same pipeline on a CPU, sized to take well under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench_lib.measure.devices import make_device, unavailable_reason
from bench_lib.measure.environment import torch_threads
from bench_lib.measure.precision import TF32, float32_mode, float32_settings
from bench_lib.measure.telemetry import run_for
from bench_lib.measure.timing import gc_disabled
from bench_lib.preflight import Finding, preflight
from bench_lib.records.cases import KEY_FIELDS
from bench_lib.records.schema import modules_path, read_modules, read_report, samples_path, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.05


@dataclass(frozen=True)
class Plan:
    """What a gpu-check on one device kind runs, and how long each step may take (seconds)."""

    profile: str
    models: str
    dtypes: str
    optimizers: str
    matmul_n: int
    pairs: int  # matmul: pairs of blocks (suite, Timer), alternating which goes first
    block_s: float  # matmul: about how long each block lasts
    warmup_s: float
    time_limit_s: float
    caps: dict[str, float] = field(default_factory=dict)


# Estimated on the GPU (H200): facts ~10 s, matmul ~20 s, bench-1 ~100-150 s (25 worker processes,
# each ~1.5 s to start CUDA), bench-2 ~40 s, cuda-tests ~30-60 s (torch.compile); ~4 min in all.
PLANS = {
    "cuda": Plan("gpu", "", "float32,tf32,bfloat16,float16", "adamw", 4096, 40, 0.05, 2.0, 480.0,
                 {"facts": 60, "matmul": 90, "bench-1": 210, "bench-2": 100, "cuda-tests": 150}),
    "cpu": Plan("tiny", "mlp", "float32", "", 256, 301, 0.0005, 0.5, 600.0,
                {"facts": 60, "matmul": 90, "bench-1": 300, "bench-2": 200, "cuda-tests": 120}),
}  # fmt: skip


class Log:
    """Prints a line and appends it to the log file at once (a killed run keeps what it said)."""

    def __init__(self, path: Path, start: float) -> None:
        self.path, self.start = path, start
        path.write_text("")

    def __call__(self, text: str, quiet: bool = False) -> None:
        if not quiet:
            print(text, flush=True)
        with self.path.open("a") as f:
            f.write(text + "\n")

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


# ------------------------------------------------------------------------- child processes


def facts(kind: str) -> dict[str, Any]:
    """The device `cuda` cases run on and the software around it (run in a child process)."""
    out: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "float32_defaults": float32_settings(),
        "torch_threads": torch.get_num_threads(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if kind != "cuda":
        return out
    from bench_lib.measure.environment import gpu_fields
    from bench_lib.measure.telemetry import COMPUTE_PROCESSES, call, load_nvml, locate_gpu
    from bench_lib.preflight import compile_problem, installed_version

    props = torch.cuda.get_device_properties(0)
    out |= {
        "cudnn": torch.backends.cudnn.version(),
        "triton": installed_version("triton"),
        "torch_compile": compile_problem("cuda") or "ok",
        "device_count": torch.cuda.device_count(),
        "device": {"name": props.name, "uuid": str(props.uuid), "capability": f"{props.major}.{props.minor}",
                   "memory_bytes": props.total_memory, "sms": props.multi_processor_count},
        "nvml": gpu_fields(),
    }  # fmt: skip
    nvml, why = load_nvml()
    location, note = locate_gpu(nvml, str(props.uuid)) if nvml is not None else (None, why)
    out["nvml_note"] = note
    if location is not None:
        procs = call(nvml, COMPUTE_PROCESSES, location.handle) or []
        out["processes_before_this_one"] = [{"pid": p.pid, "bytes": p.usedGpuMemory} for p in procs]
    return out


def _clocks(monitor: Any, label: str, say: Callable[[str], None]) -> dict[str, Any]:
    snap = monitor.snapshot() if monitor is not None else None
    if snap is None:
        return {"at": label}
    row = {"at": label, "sm_mhz": snap.sm_clock_mhz, "mem_mhz": snap.mem_clock_mhz, "temp_c": snap.temperature_c,
           "power_w": snap.power_w, "throttle": snap.throttle}  # fmt: skip
    say(f"  clocks {label}: SM {snap.sm_clock_mhz} MHz, memory {snap.mem_clock_mhz} MHz, "
        f"{snap.temperature_c} C, {snap.power_w} W, reasons {snap.throttle}")  # fmt: skip
    return row


def matmul_agreement(kind: str, n: int, pairs: int, block_s: float, warmup_s: float,
                     say: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Median time of an n x n fp32 matmul by the suite's timing (a round of `Device.time_round`:
    CUDA events on CUDA) and by torch.utils.benchmark.Timer (`Timer.timeit`), measured in
    alternating blocks of the same calls after a warm-up.

    A cold GPU raises its clocks over the first second or so, and a shared machine drifts and
    has bursts of load: one tool measured after the other would compare two states of the
    machine. So after `warmup_s` of matmuls, `pairs` pairs of blocks of about `block_s` each
    run, the suite's block first in even pairs and Timer's first in odd ones; the ratio compares
    the two medians of blocks. Like with like: `Timer.timeit` runs a few untimed calls before each
    block, and so does the suite's block here (in a benchmark, a round follows the previous round's
    calls); without them, on a loaded CPU, the suite's blocks ran 4-8% slower by the median, from
    caches the other block and other processes had evicted, while the fastest blocks agreed.
    """
    from torch.utils import benchmark

    device = make_device(kind)
    monitor = getattr(device, "monitor", None)
    a = torch.randn(n, n, device=device.name)
    b = torch.randn(n, n, device=device.name)

    def fn() -> torch.Tensor:
        return a @ b

    clocks, suite_ms, timer_ms = [], [], []
    with torch_threads(1), float32_mode("float32"):  # Timer's thread count; IEEE fp32 for both
        clocks.append(_clocks(monitor, "cold", say))
        run_for(fn, device.synchronize, warmup_s, time.perf_counter)
        timer = benchmark.Timer(stmt="a @ b", globals={"a": a, "b": b}, num_threads=1)
        per_call_s = timer.blocked_autorange(min_run_time=0.2).median
        calls = max(1, round(block_s / per_call_s))
        clocks.append(_clocks(monitor, "after warm-up", say))
        say(
            f"  warm-up {warmup_s:.1f} s; {pairs} pairs of blocks of {calls} calls (~{calls * per_call_s * 1e3:.1f} ms)"
        )
        with gc_disabled():  # as in the suite's rounds and Timer's (timeit's) loops
            for pair in range(pairs):
                for tool in ("suite", "timer") if pair % 2 == 0 else ("timer", "suite"):
                    if tool == "suite":
                        for _ in range(max(calls // 100, 2)):  # untimed, as Timer.timeit warms up each block
                            fn()
                        suite_ms.append(device.time_round(fn, calls).primary_s * 1e3 / calls)
                    else:
                        timer_ms.append(timer.timeit(calls).median * 1e3)
                if (pair + 1) % max(1, pairs // 4) == 0:
                    clocks.append(_clocks(monitor, f"after pair {pair + 1}", say))
        settings = float32_settings()
    ours, theirs = statistics.median(suite_ms), statistics.median(timer_ms)
    ratio = ours / theirs
    spread = [statistics.quantiles(x, n=4) for x in (suite_ms, timer_ms)]
    say(f"  suite {ours:.4f} ms (quartiles {spread[0][0]:.4f}-{spread[0][2]:.4f}), Timer {theirs:.4f} ms "
        f"(quartiles {spread[1][0]:.4f}-{spread[1][2]:.4f}): ratio {ratio:.4f}")  # fmt: skip
    return {
        "n": n, "device": kind, "calls_per_block": calls, "pairs": pairs,
        "suite_ms_blocks": suite_ms, "timer_ms_blocks": timer_ms, "suite_ms": ours, "timer_ms": theirs,
        "ratio": ratio, "suite_quartiles_ms": spread[0], "timer_quartiles_ms": spread[1],
        "float32": settings, "clocks": clocks, "passed": abs(ratio - 1) <= TOLERANCE,
    }  # fmt: skip


def child_main(argv: Sequence[str]) -> int:
    """`python -m bench_lib.gpucheck facts|matmul ... --json FILE`: one step in its own process."""
    p = argparse.ArgumentParser(prog="python -m bench_lib.gpucheck")
    p.add_argument("what", choices=["facts", "matmul"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--json", required=True)
    p.add_argument("--n", type=int, default=PLANS["cuda"].matmul_n)
    p.add_argument("--pairs", type=int, default=PLANS["cuda"].pairs)
    p.add_argument("--block-s", type=float, default=PLANS["cuda"].block_s)
    p.add_argument("--warmup-s", type=float, default=PLANS["cuda"].warmup_s)
    args = p.parse_args(argv)
    if args.what == "facts":
        result = facts(args.device)
        print(f"facts of {args.device} written to {args.json}")
    else:
        result = matmul_agreement(args.device, args.n, args.pairs, args.block_s, args.warmup_s,
                                  say=lambda text: print(text, flush=True))  # fmt: skip
    write_text_atomic(Path(args.json), json.dumps(result, indent=2, default=str))
    return 0


# ------------------------------------------------------------------------------ the checks


def memory_identical(first: pd.DataFrame, second: pd.DataFrame) -> dict[str, Any]:
    """The memory columns of the inference cases both runs measured, compared exactly."""
    cols = [c for c in ("mem_peak_bytes", "cuda_max_allocated_bytes") if first[c].notna().any()]
    key = list(KEY_FIELDS)
    a = first[(first["suite"] == "inference") & (first["status"] == "ok")].set_index(key)[cols]
    b = second[(second["suite"] == "inference") & (second["status"] == "ok")].set_index(key)[cols]
    both = a.merge(b, left_index=True, right_index=True, suffixes=("_1", "_2"))
    differ = [
        f"{'-'.join(map(str, k))} {c}: {row[c + '_1']} vs {row[c + '_2']}"
        for k, row in both.iterrows()
        for c in cols
        if row[c + "_1"] != row[c + "_2"]
    ]
    return {"columns": cols, "cases": len(both), "differ": differ, "passed": bool(len(both)) and not differ}


def _cuda_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["device"] == "cuda") & (frame["status"] == "ok") & (frame["suite"] != "ruler")]


def energy_coverage(frame: pd.DataFrame) -> dict[str, Any]:
    cuda = _cuda_rows(frame)
    with_energy = int(cuda["energy_j_per_item"].notna().sum())
    notes = sorted(set(cuda["gpu_telemetry_note"].dropna()))
    return {"cuda_cases": len(cuda), "with_energy": with_energy, "methods": sorted(set(cuda["energy_method"].dropna())),
            "notes": notes, "passed": len(cuda) > 0 and with_energy == len(cuda)}  # fmt: skip


def undisturbed(frame: pd.DataFrame) -> dict[str, Any]:
    """No other compute process on the GPU around any CUDA case (the suite's own parent
    processes hold no CUDA context)."""
    cuda = _cuda_rows(frame)
    others = cuda["gpu_other_processes"]
    busy = sorted({f"{r.suite}-{r.model}-{r.dtype}: {int(r.gpu_other_processes)}"
                   for r in cuda.itertuples() if not pd.isna(r.gpu_other_processes) and r.gpu_other_processes > 0})  # fmt: skip
    return {"cuda_cases": len(cuda), "known": int(others.notna().sum()), "with_other_processes": busy,
            "passed": bool(len(cuda) > 0 and others.notna().all() and not busy)}  # fmt: skip


def float32_modes(frame: pd.DataFrame) -> dict[str, Any]:
    """float32 cases ran without TF32, tf32 cases with it, on cuBLAS and cuDNN alike."""
    ok = frame[(frame["status"] == "ok") & frame["dtype"].isin(["float32", TF32])]
    wrong = sorted({f"{r.suite}-{r.model}-{r.dtype}: cuBLAS TF32 {r.cuda_matmul_tf32}, cuDNN TF32 {r.cudnn_tf32}"
                    for r in ok.itertuples()
                    if not (r.cuda_matmul_tf32 == r.cudnn_tf32 == (r.dtype == TF32))})  # fmt: skip
    return {"cases": len(ok), "wrong": wrong, "passed": len(ok) > 0 and not wrong}


# ------------------------------------------------------------------------------- the steps


@dataclass
class Check:
    """One gpu-check: where it writes, what it found so far (saved after every change)."""

    out: Path
    log: Log
    deadline: float
    caps: dict[str, float]
    results: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        write_text_atomic(self.out / "checks.json", json.dumps(self.results, indent=2, default=str))

    def record(self, name: str, value: Any) -> None:
        self.results[name] = value
        self.save()

    def step(self, name: str, cmd: list[str]) -> dict[str, Any]:
        """Run one step's command in its own process group, its output into steps/<name>.log,
        for at most its cap and what is left of the time limit; then kill what is left of it."""
        left = self.deadline - time.monotonic()
        steps = self.results.setdefault("steps", {})
        if left < 5:
            steps[name] = {"skipped": "the time limit was reached"}
            self.log(f"[{self.log.elapsed():6.1f} s] {name}: SKIPPED, the time limit was reached")
            self.save()
            return steps[name]
        timeout = min(self.caps.get(name, left), left)
        path = self.out / "steps" / f"{name}.log"
        path.parent.mkdir(exist_ok=True)
        self.log(f"[{self.log.elapsed():6.1f} s] {name}: {' '.join(cmd)}  (at most {timeout:.0f} s)")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1"}  # fmt: skip
        began = time.monotonic()
        with path.open("w") as sink:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # fmt: skip
            try:
                rc: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
            _kill_group(proc)
        seconds = time.monotonic() - began
        tail = path.read_text(errors="replace").strip().splitlines()
        steps[name] = {"exit_code": rc, "seconds": round(seconds, 1), "timed_out": rc is None,
                       "last_line": tail[-1] if tail else ""}  # fmt: skip
        what = "TIMED OUT" if rc is None else f"exit {rc}"
        self.log(
            f"[{self.log.elapsed():6.1f} s] {name}: {what} after {seconds:.1f} s; {steps[name]['last_line']}"
        )
        if rc not in (0, 5):  # 5: pytest collected nothing
            self.log("\n".join(f"    | {line}" for line in tail[-25:]))
        self.save()
        return steps[name]


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the step's process group (pytest, its forkserver and workers) if any is left."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def newest_report(folder: Path) -> Path | None:
    """`latest.csv`, or for a run cut short the report it was writing (rewritten after every case)."""
    if (folder / "latest.csv").is_file():
        return folder / "latest.csv"
    reports = [p for p in folder.glob("*.csv") if not p.name.endswith(".samples.csv")]
    return max(reports, key=lambda p: p.stat().st_mtime, default=None)


def benchmark_cmd(results: Path, kind: str, plan: Plan, select: str) -> list[str]:
    cmd = [
        sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
        f"--bench-profile={plan.profile}", f"--bench-devices={kind}", f"--bench-dtypes={plan.dtypes}",
        f"--bench-results-dir={results}", "--bench-history=off", "-k", select,
    ]  # fmt: skip
    cmd += [f"--bench-models={plan.models}"] if plan.models else []
    return cmd + ([f"--bench-optimizers={plan.optimizers}"] if plan.optimizers else [])


def write_reports(frame: pd.DataFrame, stem: Path, log: Log, modules: pd.DataFrame | None = None) -> None:
    """The HTML, Markdown and console reports of `frame` (with "Where the memory goes" from
    `modules`, the by-module rows, as `report` shows it)."""
    from bench_lib.analysis import report

    try:
        write_text_atomic(stem.with_suffix(".html"), report.render_html(frame, modules))
    except ImportError as exc:  # matplotlib missing: the tables without the plots
        log(f"no plots ({exc}); writing the HTML tables only")
        tables = "".join(
            f"<h2>{t}</h2><p>{x}</p>{table.to_html(border=0)}" for t, x, table in report.sections(frame)
        )
        write_text_atomic(stem.with_suffix(".html"), f"<!DOCTYPE html><html><body>{tables}</body></html>")
    try:
        write_text_atomic(stem.with_suffix(".md"), report.render_markdown(frame, modules))
    except ImportError as exc:  # tabulate missing
        log(f"no Markdown report ({exc})")
    write_text_atomic(stem.with_suffix(".txt"), report.render_console(frame, modules=modules) + "\n")


def key_figures(frame: pd.DataFrame) -> str:
    """The figures a README's GPU section quotes, compact: per inference case device and host
    ms, allocator peak and energy per item; per fine-tuning group its `full` and `frozen_nograd`."""
    ok = frame[frame["status"] == "ok"]
    picked = ok[(ok["suite"] == "inference") | ok["strategy"].isin(["full", "frozen_nograd"])]
    lines = [
        f"{'case':44s} {'device ms':>10} {'host ms':>9} {'peak MiB':>9} {'mJ/item':>9} {'W':>4} {'calls':>5}"
    ]
    for r in picked.itertuples():
        what = r.mode or f"{r.optimizer}/{r.strategy}"
        label = " ".join(str(x) for x in (r.suite[:5], r.model, f"b{r.batch_size}", r.dtype, what))
        lines.append(f"{label[:44]:44s} {_num(r.latency_ms_median, 4):>10} {_num(r.host_latency_ms_median, 4):>9} "
                     f"{_num(r.mem_peak_bytes, 2, 2**20):>9} {_num(r.energy_j_per_item, 3, 1e-3):>9} "
                     f"{_num(r.gpu_power_w, 0):>4} {_num(r.iterations, 0):>5}")  # fmt: skip
    return "\n".join(lines)


def _num(value: Any, digits: int, unit: float = 1.0) -> str:
    return "-" if value is None or pd.isna(value) else f"{float(value) / unit:.{digits}f}"


def describe_check(name: str, c: dict[str, Any]) -> str:
    """What one check found, in one line."""
    if c.get("why"):
        return str(c["why"])
    if name == "preflight":
        return "; ".join(c["missing"]) or "all required pieces present"
    if name == "cuda_tests":
        return str(c.get("summary", ""))
    if name == "matmul":
        return (f"n={c['n']}: suite {c['suite_ms']:.4f} ms vs Timer {c['timer_ms']:.4f} ms per call: ratio "
                f"{c['ratio']:.4f} ({c['pairs']} alternating pairs of {c['calls_per_block']}-call blocks)")  # fmt: skip
    if name == "benchmark":
        return f"{c['cases']} cases, {len(c['not_ok'])} not ok, pytest exits {c['pytest_exit_codes']}"
    if name == "memory_identical":
        return f"{c['cases']} inference cases in both runs, {len(c['differ'])} differ ({', '.join(c['columns'])})"
    if name == "energy":
        note = f"; {c['notes'][0]}" if c["notes"] else ""
        return f"{c['with_energy']}/{c['cuda_cases']} CUDA cases ({', '.join(c['methods']) or '-'}){note}"
    if name == "undisturbed":
        return f"{len(c['with_other_processes'])} of {c['cuda_cases']} CUDA cases had other processes ({c['known']} known)"
    if name == "float32_modes":
        return f"{c['cases']} float32/tf32 cases, {len(c['wrong'])} with the wrong TF32 setting"
    return ""


CHECKS = (
    "preflight",
    "matmul",
    "benchmark",
    "memory_identical",
    "energy",
    "undisturbed",
    "float32_modes",
    "cuda_tests",
)


def summary_table(results: dict[str, Any]) -> str:
    """The checks, one line each: name, ok/FAILED, what was found."""
    lines = ["check             result  detail"]
    for name in CHECKS:
        if name in results:
            check = results[name]
            lines.append(
                f"{name:17s} {'ok' if check.get('passed') else 'FAILED':7s} {describe_check(name, check)}"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, Plan]:
    p = argparse.ArgumentParser(prog="python -m bench_lib.gpucheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", required=True, help="folder for the CSV, reports, logs and checks")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--profile", help="benchmark profile (default: gpu on CUDA, tiny on the CPU)")
    p.add_argument("--models", help="default: the profile's on CUDA (mlp, cnn, transformer), mlp on the CPU")
    p.add_argument("--dtypes", help="default: float32,tf32,bfloat16,float16 on CUDA, float32 on the CPU")
    p.add_argument("--optimizers", help="fine-tuning optimizers (default: adamw on CUDA, all on the CPU)")
    p.add_argument(
        "--matmul-size", type=int, help="n of the n x n matmul (default: 4096 on CUDA, 256 on the CPU)"
    )
    p.add_argument(
        "--time-limit", type=float, help="seconds for all steps (default: 480 on CUDA, 600 on the CPU)"
    )
    args = p.parse_args(argv)
    plan = PLANS[args.device]
    chosen = {"profile": args.profile, "models": args.models, "dtypes": args.dtypes, "optimizers": args.optimizers,
              "matmul_n": args.matmul_size, "time_limit_s": args.time_limit}  # fmt: skip
    return args, Plan(**{**plan.__dict__, **{k: v for k, v in chosen.items() if v is not None}})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("facts", "matmul"):
        return child_main(argv)
    args, plan = parse_args(argv)
    findings = preflight(args.device)
    reason = unavailable_reason(args.device)
    if reason:
        findings.append(Finding("a GPU", False, f"gpu-check needs a GPU: {reason}"))
    fatal = [f for f in findings if f.required and not f.ok]
    for f in fatal:
        print(f.line() if f.name != "a GPU" else f"error: {f.detail}", file=sys.stderr)
    if fatal:
        return 2
    out = Path(args.out).resolve()  # the steps run in the repository root
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpucheck.log", time.monotonic())
    check = Check(out, log, time.monotonic() + plan.time_limit_s, plan.caps)
    for f in findings:
        log(f.line(), quiet=f.ok)  # the ok lines go to the log only
    check.record("preflight", {"findings": [f.line() for f in findings], "missing": [], "passed": True})
    check.record("plan", plan.__dict__)
    py = sys.executable

    # 1. facts (a child process: this one never creates a CUDA context)
    check.step(
        "facts",
        [py, "-m", "bench_lib.gpucheck", "facts", "--device", args.device, "--json", str(out / "facts.json")],
    )
    found = json.loads((out / "facts.json").read_text()) if (out / "facts.json").is_file() else {}
    found["gpu_check_process_initialized_cuda"] = torch.cuda.is_initialized()  # must stay False
    check.record("facts", found)
    name = (found.get("nvml") or {}).get("gpu_name") or (found.get("device") or {}).get("name") or "cpu"
    log(_facts_lines(found, args.device))

    # 2. matmul agreement
    check.step("matmul", [py, "-m", "bench_lib.gpucheck", "matmul", "--device", args.device, "--json",
                          str(out / "matmul.json"), "--n", str(plan.matmul_n), "--pairs", str(plan.pairs),
                          "--block-s", str(plan.block_s), "--warmup-s", str(plan.warmup_s)])  # fmt: skip
    matmul_path = out / "matmul.json"
    check.record("matmul", json.loads(matmul_path.read_text()) if matmul_path.is_file()
                 else {"passed": False, "why": "no result (see steps/matmul.log)"})  # fmt: skip
    for line in (
        (out / "steps" / "matmul.log").read_text().splitlines()
        if (out / "steps" / "matmul.log").is_file()
        else []
    ):
        log(line)

    # 3, 4. the benchmark, twice
    runs = {}
    for step, select in (("bench-1", "inference or finetune or ruler"), ("bench-2", "inference")):
        folder = out / ("run1" if step == "bench-1" else "run2")
        shutil.rmtree(folder, ignore_errors=True)
        check.step(step, benchmark_cmd(folder, args.device, plan, select))
        runs[step] = newest_report(folder)
    first = guarded(log, lambda: read_report(runs["bench-1"]) if runs["bench-1"] else None)
    second = guarded(log, lambda: read_report(runs["bench-2"]) if runs["bench-2"] else None)
    if first is None:
        check.record("benchmark", {"passed": False, "why": "bench-1 wrote no report (see steps/bench-1.log)"})
    else:
        bad = first[first["status"] != "ok"]
        codes = [check.results["steps"].get(s, {}).get("exit_code") for s in ("bench-1", "bench-2")]
        check.record("benchmark", {"cases": len(first), "pytest_exit_codes": codes,
                                   "not_ok": [f"{r.suite}-{r.model}-{r.dtype} {r.status}: {r.error}" for r in bad.itertuples()],
                                   "passed": bad.empty and codes == [0, 0]})  # fmt: skip
        stem = out / slug(name)
        run1 = runs["bench-1"]
        assert run1 is not None  # `first` was read from it
        shutil.copyfile(run1, stem.with_suffix(".csv"))
        for companion in (samples_path, modules_path):  # raw samples; memory by module
            if companion(run1).is_file():
                shutil.copyfile(companion(run1), companion(stem.with_suffix(".csv")))
        # memory by module: a bad file costs its section only, not the reports
        modules = guarded(log, lambda: read_modules(stem.with_suffix(".csv")))
        guarded(log, lambda: write_reports(first, stem, log, modules))
        if second is not None:
            check.record("memory_identical", verdict(log, memory_identical, first, second))
        else:
            check.record("memory_identical", {"passed": False, "why": "bench-2 wrote no report"})
        if args.device == "cuda":
            check.record("energy", verdict(log, energy_coverage, first))
            check.record("undisturbed", verdict(log, undisturbed, first))
            check.record("float32_modes", verdict(log, float32_modes, first))

    # 5. the CUDA-only tests, last: torch.compile's first build is the least predictable step
    done = check.step(
        "cuda-tests", [py, "-m", "pytest", "tests/test_cuda.py", "-q", "-rs", "-p", "no:cacheprovider"]
    )
    rc = done.get("exit_code")
    check.record("cuda_tests", {"exit_code": rc, "summary": done.get("last_line", done.get("skipped", "")),
                                "passed": rc == 0 or (args.device == "cpu" and rc in (0, 5))})  # fmt: skip

    if first is not None:
        figures = guarded(log, lambda: key_figures(first))
        log(f"\nkey figures (bench-1; the full report is in {slug(name)}.txt / .html):\n{figures}")
    log("\nsteps: " + ", ".join(f"{k} {v.get('seconds', '-')} s" + (" (TIMED OUT)" if v.get("timed_out") else "")
                                for k, v in check.results["steps"].items()) + f"; total {log.elapsed():.0f} s")  # fmt: skip
    log(_facts_lines(found, args.device))
    clocks = [c for c in check.results["matmul"].get("clocks", []) if "sm_mhz" in c]
    picked = {id(c): c for c in (clocks[:2] + clocks[-1:])}.values()
    if clocks:
        log("matmul clocks: " + "; ".join(f"{c['at']} SM {c['sm_mhz']} MHz, {c['temp_c']} C, {c['power_w']} W, "
                                          f"reasons {c['throttle']}" for c in picked))  # fmt: skip
    log(summary_table(check.results))
    failed = [
        k for k, v in check.results.items() if isinstance(v, dict) and "passed" in v and not v["passed"]
    ]
    log(
        f"gpu-check: {'all checks passed' if not failed else 'FAILED: ' + ', '.join(failed)} (details in {out / 'checks.json'})"
    )
    return 1 if failed else 0


def guarded(log: Log, fn: Callable[[], Any]) -> Any:
    """`fn()`, or None after logging why it failed: one broken report or figure must not cost
    the steps and the checks that follow."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - logged; the gpu-check goes on
        log(f"error: {type(exc).__name__}: {exc}")
        return None


def verdict(log: Log, check: Callable[..., dict[str, Any]], *frames: pd.DataFrame) -> dict[str, Any]:
    """A check's verdict, or a failed one that says why it could not be computed."""
    result = guarded(log, lambda: check(*frames))
    return (
        result if result is not None else {"passed": False, "why": "could not be computed (see gpucheck.log)"}
    )


def _facts_lines(found: dict[str, Any], kind: str) -> str:
    if kind != "cuda":
        return f"device: cpu; torch {found.get('torch')}; python {found.get('python')}"
    nvml, dev = found.get("nvml") or {}, found.get("device") or {}
    f32 = found.get("float32_defaults") or {}
    return (
        f"device: {nvml.get('gpu_name') or dev.get('name')} {nvml.get('gpu_uuid') or dev.get('uuid')} "
        f"(capability {dev.get('capability')}, {_num(dev.get('memory_bytes'), 1, 2**30)} GiB, MIG {nvml.get('gpu_mig_mode') or 'n/a'}, "
        f"{found.get('device_count')} visible, CUDA_VISIBLE_DEVICES={found.get('cuda_visible_devices')})\n"
        f"software: driver {nvml.get('gpu_driver') or '?'}; torch {found.get('torch')} (CUDA {found.get('cuda')}, cuDNN "
        f"{found.get('cudnn')}); triton {found.get('triton')}; python {found.get('python')}; torch.compile: "
        f"{found.get('torch_compile')}\n"
        f"float32 defaults: matmul precision {f32.get('float32_matmul_precision')}, cuBLAS TF32 "
        f"{f32.get('cuda_matmul_tf32')}, cuDNN TF32 {f32.get('cudnn_tf32')} (float32 cases run with both off, tf32 cases "
        f"with both on); other processes on the GPU at the start: {len(found.get('processes_before_this_one') or [])}; "
        f"CUDA initialized in the gpu-check process: {found.get('gpu_check_process_initialized_cuda')}"
        + (f"\nNVML: {found['nvml_note']}" if found.get("nvml_note") else "")
    )


if __name__ == "__main__":
    sys.exit(main())
