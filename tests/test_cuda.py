"""CUDA-only tests: skipped without a GPU; `make gpu-check` runs them on a GPU machine."""

import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from bench_lib.measure.devices import CudaDevice
from bench_lib.measure.timing import Variant, calibrate_iterations, measure_interleaved
from bench_lib.models import ZOO, ModelInstance, ModelSpec
from bench_lib.preflight import compile_problem
from bench_lib.records.cases import Case, Profile, get_profile
from bench_lib.suites.inference.measure import measure_inference_group

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TINY = Profile("t", (8,), rounds=5, warmup_rounds=2, iterations=2, energy_seconds=0.3)
ROOT = Path(__file__).resolve().parent.parent


def device():
    return CudaDevice(torch.cuda.current_device())


def test_event_timing_measures_device_time_and_host_time():
    cuda = device()
    a = torch.randn(2048, 2048, device=cuda.name)
    timed = cuda.time_round(lambda: a @ a, 5)
    assert timed.device_s is not None and timed.device_s > 0 and timed.host_s > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_events_time_the_measured_device_not_the_current_one():
    cuda = CudaDevice(1)
    a = torch.randn(4096, 4096, device="cuda:1")
    with torch.cuda.device(0):
        timed = cuda.time_round(lambda: a @ a, 5)
    assert timed.device_s > 0.5 * timed.host_s


def test_allocator_peak_is_exact_for_a_known_allocation():
    counter = device().peak_counter()
    with counter.track():
        block = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")  # 1 MiB
        del block
    assert counter.peak_bytes == 1 << 20
    assert counter.extra["cuda_max_reserved_bytes"] >= counter.extra["cuda_max_allocated_bytes"]


@pytest.mark.parametrize("dtype", ["float32", "tf32", "bfloat16", "float16"])
def test_a_cuda_group_has_events_allocator_transfer_and_telemetry_columns(dtype):
    cuda = device()
    results = measure_inference_group(ZOO["mlp"], cuda, 8, TINY, ["grad", "no_grad", "inference_mode"], dtype)
    assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
    for r in results.values():
        assert r.samples.device_ms is not None
        m = r.metrics
        assert m["cuda_max_allocated_bytes"] >= m["cuda_live_before_bytes"]
        assert m["h2d_pageable_ms"] > 0 and m["h2d_pinned_ms"] > 0 and m["input_bytes"] == 8 * 256 * 4
        if cuda.monitor is not None and cuda.monitor.energy_mj() is not None:
            assert m["energy_j_per_item"] > 0 and m["energy_method"] == "counter"


def test_a_group_records_its_float32_settings_and_telemetry():
    from bench_lib.measure.worker import run_request

    profile = {**get_profile("tiny").__dict__, "batch_sizes": [8], "energy_seconds": 0.0}
    rows = {}
    for dtype in ("float32", "tf32"):
        cases = [Case("inference", "cnn", "cuda", mode, 8, dtype) for mode in ("grad", "no_grad")]
        request = {"cases": [asdict(c) for c in cases], "model": "cnn", "profile": profile, "threads": 1}
        rows[dtype] = run_request(request)["no_grad"].row()
    assert (rows["float32"]["cuda_matmul_tf32"], rows["float32"]["cudnn_tf32"]) == (False, False)
    assert (rows["tf32"]["cuda_matmul_tf32"], rows["tf32"]["cudnn_tf32"]) == (True, True)
    assert rows["float32"]["float32_matmul_precision"] == "highest"
    if "gpu_telemetry_note" not in rows["float32"]:  # NVML found this device
        assert rows["float32"]["gpu_other_processes"] is not None
        assert (
            rows["float32"]["gpu_process_memory_bytes"] is None
            or rows["float32"]["gpu_process_memory_bytes"] > 0
        )


def test_an_oom_in_a_timed_round_frees_what_the_forward_allocated():
    """The forward allocates 256 MiB, then runs out of memory: the other variant's later rounds
    must not see those 256 MiB still allocated, and the cache is emptied."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    seen = []

    def forward():
        activations = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        return activations, torch.empty(1 << 50, dtype=torch.uint8, device="cuda")  # 1 PiB

    out = measure_interleaved(
        [
            Variant("oom", forward),
            Variant("other", lambda: seen.append(torch.cuda.memory_allocated() - before)),
        ],
        device(),
        rounds=3,
        warmup_rounds=0,
        iterations=1,
    )
    assert isinstance(out.errors["oom"], torch.OutOfMemoryError)
    assert seen and max(seen) < 1 << 20
    assert torch.cuda.memory_reserved() - before < 256 << 20


def test_out_of_memory_is_an_oom_case_and_memory_is_released():
    class Hog(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.empty(1 << 50, dtype=torch.uint8, device=x.device)  # 1 PiB

    spec = ModelSpec("hog", factory=lambda b: ModelInstance(Hog(), torch.ones(b, 4)))
    before = torch.cuda.memory_allocated()
    results = measure_inference_group(spec, device(), 8, TINY, ["grad", "no_grad"])
    assert {r.status for r in results.values()} == {"oom"}
    assert all("OutOfMemoryError" in r.error for r in results.values())
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before < 1 << 20


def test_calibrated_rounds_last_at_least_the_target_on_the_device():
    cuda = device()
    a = torch.randn(64, 64, device="cuda")
    variants = [Variant("tiny", lambda: a @ a)]
    n = calibrate_iterations(variants, cuda, 0.002)
    out = measure_interleaved(variants, cuda, rounds=5, warmup_rounds=1, iterations=n)
    # n is confirmed by one round at the start; later rounds may run faster (clocks ramping up
    # after the warm-up, a launch-bound kernel on a host that speeds up), so half the target is
    # the bar: without calibration a round of this matmul lasts microseconds, 100x below it
    assert n > 1 and min(out.samples["tiny"].device_ms) * n >= 2.0 * 0.5


def test_nvml_sees_this_device_by_its_uuid():
    cuda = device()
    if cuda.monitor is None:
        pytest.skip(f"NVML telemetry unavailable: {cuda.telemetry_note}")
    assert cuda.monitor.handle is not None
    snap = cuda.monitor.snapshot()
    assert snap.sm_clock_mhz and snap.temperature_c is not None


def test_the_suites_parent_process_creates_no_cuda_context():
    """Choosing cases (device, dtype and compile support) and reading the fingerprint only read
    device properties: the parent of the workers must never show in NVML as another process."""
    code = textwrap.dedent(
        """
        import torch
        from bench_lib.measure.environment import collect_environment
        from bench_lib.session import RunConfig, unavailable
        config = RunConfig.parse(profile="gpu", devices="cuda", dtypes="float32,tf32,bfloat16,float16")
        reasons = [unavailable(case) for case in config.cases()]
        env = collect_environment()
        print(torch._C._cuda_hasPrimaryContext(0), env.gpu_name)
        """
    )
    if not hasattr(torch._C, "_cuda_hasPrimaryContext"):
        pytest.skip("this torch cannot tell whether a primary context exists")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == "False", proc.stdout


@pytest.mark.skipif(compile_problem("cuda") is not None, reason=str(compile_problem("cuda")))
def test_compiled_cases_on_cuda_have_allocator_memory_and_compile_time():
    results = measure_inference_group(ZOO["mlp"], device(), 8, TINY, ["grad", "no_grad+compile"])
    assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
    compiled = results["no_grad+compile"].metrics
    assert compiled["compile_s"] > 0 and compiled["mem_peak_bytes"] > 0
