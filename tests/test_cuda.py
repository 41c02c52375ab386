"""CUDA-only tests: skipped without a GPU; `make gpu-check` runs them on a GPU machine."""

import pytest
import torch

from bench_lib.cases import Profile
from bench_lib.devices import CudaDevice
from bench_lib.inference import measure_inference_group
from bench_lib.models import ZOO, ModelInstance, ModelSpec
from bench_lib.telemetry import GpuMonitor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TINY = Profile("t", (8,), rounds=5, warmup_rounds=2, iterations=2, energy_seconds=0.3)


def test_event_timing_measures_device_time_and_host_time():
    device = CudaDevice(torch.cuda.current_device())
    a = torch.randn(2048, 2048, device=device.name)
    timed = device.time_round(lambda: a @ a, 5)
    assert timed.device_s is not None and timed.device_s > 0 and timed.host_s > 0


def test_allocator_peak_is_exact_for_a_known_allocation():
    device = CudaDevice(torch.cuda.current_device())
    counter = device.peak_counter()
    with counter.track():
        block = torch.empty(1 << 20, dtype=torch.uint8, device=device.name)  # 1 MiB
        del block
    assert counter.peak_bytes == 1 << 20
    assert counter.extra["cuda_max_reserved_bytes"] >= counter.extra["cuda_max_allocated_bytes"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_a_cuda_group_has_events_allocator_transfer_and_telemetry_columns(dtype):
    device = CudaDevice(torch.cuda.current_device())
    results = measure_inference_group(
        ZOO["mlp"], device, 8, TINY, ["grad", "no_grad", "inference_mode"], dtype
    )
    assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
    for r in results.values():
        assert r.samples.device_ms is not None
        m = r.metrics
        assert m["cuda_max_allocated_bytes"] >= m["cuda_live_before_bytes"]
        assert m["h2d_pageable_ms"] > 0 and m["h2d_pinned_ms"] > 0 and m["input_bytes"] == 8 * 256 * 4
        if device.monitor is not None and device.monitor.energy_mj() is not None:
            assert m["energy_j_per_item"] > 0 and m["energy_method"] == "counter"


def test_out_of_memory_is_an_oom_case_and_memory_is_released():
    class Hog(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.empty(1 << 50, dtype=torch.uint8, device=x.device)  # 1 PiB

    spec = ModelSpec("hog", factory=lambda b: ModelInstance(Hog(), torch.ones(b, 4)))
    device = CudaDevice(torch.cuda.current_device())
    before = torch.cuda.memory_allocated()
    results = measure_inference_group(spec, device, 8, TINY, ["grad", "no_grad"])
    assert {r.status for r in results.values()} == {"oom"}
    assert all("OutOfMemoryError" in r.error for r in results.values())
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before < 1 << 20


def test_nvml_sees_this_gpu():
    monitor = GpuMonitor.open(torch.cuda.current_device(), uuid=str(torch.cuda.get_device_properties(0).uuid))
    if monitor is None:
        pytest.skip("NVML not available")
    snap = monitor.snapshot()
    assert snap.sm_clock_mhz and snap.temperature_c is not None


def test_compiled_cases_on_cuda_have_allocator_memory_and_compile_time():
    device = CudaDevice(torch.cuda.current_device())
    results = measure_inference_group(ZOO["mlp"], device, 8, TINY, ["grad", "no_grad+compile"])
    assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
    compiled = results["no_grad+compile"].metrics
    assert compiled["compile_s"] > 0 and compiled["mem_peak_bytes"] > 0
