"""The round loop, with a fake clock (CPU) and a fake CUDA with its own device clock: no real
timing, no GPU."""

import gc
import sys
import weakref

import pytest
import torch
from fakes import FakeClock, FakeCuda, FakeEvent

from bench_lib.measure.devices import CpuDevice, CudaDevice
from bench_lib.measure.runner import with_iterations, with_rounds
from bench_lib.measure.timing import (
    Samples,
    Variant,
    calibrate_iterations,
    measure_interleaved,
    next_round_size,
)
from bench_lib.records.cases import Case
from bench_lib.records.results import CaseResult


def test_samples_are_per_call_milliseconds_and_warmup_is_not_recorded():
    clock = FakeClock()
    out = measure_interleaved(
        [Variant("a", clock.work(0.002)), Variant("b", clock.work(0.001))],
        CpuDevice(clock),
        rounds=4,
        warmup_rounds=3,
        iterations=5,
    )
    assert out.samples["a"].host_ms == pytest.approx((2.0,) * 4)
    assert out.samples["b"].host_ms == pytest.approx((1.0,) * 4)
    assert out.samples["a"].iterations == 5 and out.samples["a"].warmup_rounds == 3
    assert out.samples["a"].device_ms is None and out.errors == {}


def test_variants_are_interleaved_with_rotating_start():
    order = []
    variants = [Variant(n, lambda n=n: order.append(n)) for n in "abc"]
    measure_interleaved(variants, CpuDevice(), rounds=3, warmup_rounds=0, iterations=1)
    assert "".join(order) == "abc" + "bca" + "cab"


def test_context_is_entered_around_each_round():
    events = []

    class Ctx:
        def __enter__(self):
            events.append("enter")

        def __exit__(self, *exc):
            events.append("exit")

    measure_interleaved(
        [Variant("a", lambda: events.append("call"), Ctx)],
        CpuDevice(),
        rounds=2,
        warmup_rounds=0,
        iterations=2,
    )
    assert events == ["enter", "call", "call", "exit"] * 2


def test_a_failing_variant_is_dropped_and_the_others_go_on():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")

    released = []

    class Device(CpuDevice):
        def release_memory(self):
            released.append(True)

    out = measure_interleaved(
        [Variant("ok", lambda: None), Variant("flaky", flaky)],
        Device(),
        rounds=5,
        warmup_rounds=0,
        iterations=1,
    )
    assert set(out.samples) == {"ok"} and out.samples["ok"].rounds == 5
    assert str(out.errors["flaky"]) == "boom" and len(released) == 1


class Activations:
    """What a forward allocated; it refers to the forward's frame, a reference cycle that only the
    garbage collector can free (as closures and hooks of real models often make)."""

    def __init__(self):
        self.tensor = torch.ones(1 << 16)
        self.frame = sys._getframe(1)


def test_an_oom_inside_a_forward_frees_what_it_allocated_before_the_cache_is_emptied():
    """The failed forward's activations are referenced by its frame, which the exception's
    traceback holds: the error must be kept without it, and the cycle collected, before the
    device's cache is emptied, or the memory stays allocated for the rest of the group."""
    allocated = []

    def forward():
        activations = Activations()
        allocated.append(weakref.ref(activations.tensor))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 PiB")

    alive_when_released = []

    class Device(CpuDevice):
        def release_memory(self):
            alive_when_released.append(allocated[-1]() is not None)

    seen_by_the_other = []
    other = Variant("other", lambda: seen_by_the_other.append(allocated[-1]() if allocated else None))
    out = measure_interleaved(
        [Variant("oom", forward), other], Device(), rounds=3, warmup_rounds=0, iterations=1
    )
    assert alive_when_released == [False]
    assert seen_by_the_other and all(t is None for t in seen_by_the_other)
    error = out.errors["oom"]
    assert isinstance(error, torch.OutOfMemoryError) and error.__traceback__ is None
    assert gc.isenabled()


def test_calibration_skips_a_variant_that_raises_and_frees_it():
    allocated = []

    def forward():
        activations = Activations()
        allocated.append(weakref.ref(activations.tensor))
        raise torch.OutOfMemoryError("out of memory")

    clock = FakeClock()
    n = calibrate_iterations(
        [Variant("oom", forward), Variant("ok", clock.work(1e-4))], CpuDevice(clock), 0.001
    )
    assert n == 10 and allocated[0]() is None


def fake_gpu(devices=1, launch_s=5e-6):
    clock = FakeClock()
    cuda = FakeCuda(clock, devices=devices, launch_s=launch_s)
    return clock, cuda


def test_cuda_rounds_use_events_with_one_sync_per_round_not_per_iteration():
    clock, cuda = fake_gpu()
    device = CudaDevice(0, clock=clock, cuda=cuda)
    out = measure_interleaved(
        [Variant("k", cuda.kernel(0.001))], device, rounds=2, warmup_rounds=0, iterations=3
    )
    assert cuda.log == ["record:0", "call", "call", "call", "record:0", "event-sync"] * 2
    samples = out.samples["k"]
    # device time: the launch gap before the first kernel (5 us), then three 1 ms kernels
    assert samples.device_ms == pytest.approx(((0.005 + 3.0) / 3,) * 2)
    assert samples.primary_ms == samples.device_ms
    assert samples.host_ms == pytest.approx(samples.device_ms)  # the host waited for the end event


def test_device_time_is_read_from_the_events_after_they_completed():
    """The fake device clock has its own epoch and events cannot be read before the device
    passed them: host time passed off as device time, or an early read, fails."""
    clock, cuda = fake_gpu()
    start, end = FakeEvent(cuda, True), FakeEvent(cuda, True)
    start.record()
    cuda.launch(0.002)
    end.record()
    with pytest.raises(RuntimeError, match="completed"):
        start.elapsed_time(end)
    assert clock.now == pytest.approx(5e-6)  # the host only launched
    end.synchronize()
    assert start.elapsed_time(end) == pytest.approx(2.005)
    assert end.device_time_s != pytest.approx(clock.now)


def test_events_are_recorded_on_the_measured_devices_stream():
    """cuda:1 measured while cuda:0 is current: events recorded on the current device's stream
    would time device 0, idle, instead of the kernels on device 1."""
    clock, cuda = fake_gpu(devices=2)
    device = CudaDevice(1, clock=clock, cuda=cuda)
    assert cuda.current_device() == 0
    timed = device.time_round(cuda.kernel(0.003, device=1), 2)
    assert timed.device_s == pytest.approx(0.006 + 5e-6)
    assert cuda.log.count("record:1") == 2 and "record:0" not in cuda.log


def test_host_and_device_time_differ_when_the_host_only_launches():
    """A launch-bound model: 20 us kernels, 50 us to launch each. The device idles between
    kernels, so device time per call is the launch interval, not the kernel time."""
    clock, cuda = fake_gpu(launch_s=50e-6)
    device = CudaDevice(0, clock=clock, cuda=cuda)
    timed = device.time_round(cuda.kernel(20e-6), 10)
    assert timed.device_s == pytest.approx(10 * 50e-6 + 20e-6)
    assert timed.host_s == pytest.approx(timed.device_s)


def test_next_round_size_follows_the_1_2_5_series():
    assert [next_round_size(x) for x in (0.3, 1, 1.5, 2, 3, 7, 10, 11, 49, 51, 2001)] == [
        1, 1, 2, 2, 5, 10, 10, 20, 50, 100, 5000,
    ]  # fmt: skip


def test_calibration_makes_every_round_last_at_least_the_target():
    """Rounds of a 30 us kernel must last >= 2 ms on the device: 2 ms / 30 us -> 67 -> 100 calls."""
    clock, cuda = fake_gpu()
    device = CudaDevice(0, clock=clock, cuda=cuda)
    variants = [Variant("fast", cuda.kernel(30e-6)), Variant("slow", cuda.kernel(90e-6))]
    n = calibrate_iterations(variants, device, 0.002)
    assert n == 100
    out = measure_interleaved(variants, device, rounds=3, warmup_rounds=0, iterations=n)
    assert all(ms * n >= 2.0 for s in out.samples.values() for ms in s.device_ms)


def test_calibration_starts_from_the_models_own_calls_per_round():
    clock = FakeClock()
    assert calibrate_iterations([Variant("a", clock.work(0.01))], CpuDevice(clock), 0.001, start=8) == 8
    assert calibrate_iterations([Variant("a", clock.work(1e-5))], CpuDevice(clock), 0.001, start=8) == 100
    assert calibrate_iterations([Variant("a", clock.work(1e-5))], CpuDevice(clock), 0.0, start=3) == 3


def test_a_groups_later_processes_reuse_the_first_ones_calls_per_round():
    case = Case("inference", "mlp", "cpu", "grad", 1)
    first = {"grad": CaseResult(case, samples=Samples(iterations=50, host_ms=(1.0,)))}
    request = {"profile": {"iterations": None, "rounds": 3}, "suite": "inference"}
    assert with_iterations(request, first)["profile"] == {"iterations": 50, "rounds": 3}
    fixed = {"profile": {"iterations": 1}}
    assert with_iterations(fixed, first) is fixed
    failed = {"grad": CaseResult(case, "failed", "boom")}
    assert with_iterations(request, failed) is request


def test_samples_validate_their_shape():
    with pytest.raises(ValueError):
        Samples(iterations=0, host_ms=(1.0,))
    with pytest.raises(ValueError):
        Samples(iterations=1, host_ms=())
    with pytest.raises(ValueError):
        Samples(iterations=1, host_ms=(1.0, 2.0), device_ms=(1.0,))


def test_later_processes_time_about_process_timing_s_of_rounds_but_at_least_min_rounds():
    grad, fast = (
        Case("finetune", "cnn", "cpu", "", 32, strategy=s, optimizer="sgd") for s in ("full", "frozen_1")
    )
    # one round of the group: 2 calls of 100 ms (grad) + 2 calls of 50 ms = 300 ms
    first = {
        "full": CaseResult(grad, samples=Samples(iterations=2, host_ms=(100.0, 100.0, 100.0))),
        "frozen_1": CaseResult(fast, samples=Samples(iterations=2, host_ms=(50.0, 50.0, 50.0))),
    }
    profile = {"rounds": 30, "finetune_rounds": 10, "process_timing_s": 1.5, "min_rounds": 2}
    assert with_rounds({"profile": profile}, first)["profile"] | {} == profile | {
        "rounds": 5,
        "finetune_rounds": 5,
    }
    tight = profile | {"process_timing_s": 0.1}
    assert with_rounds({"profile": tight}, first)["profile"]["finetune_rounds"] == 2  # min_rounds
    off = {"profile": profile | {"process_timing_s": 0.0}}
    assert with_rounds(off, first) is off


def test_later_processes_warm_up_for_about_a_third_of_their_timing_but_at_least_one_round():
    case = Case("finetune", "cnn", "cpu", "", 32, strategy="full", optimizer="sgd")
    # one round: 1 call of 200 ms; a third of 1.5 s is 500 ms: 2 warm-up rounds fit
    first = {"full": CaseResult(case, samples=Samples(iterations=1, host_ms=(200.0, 200.0)))}
    profile = {"rounds": 30, "warmup_rounds": 5, "finetune_warmup_rounds": 3, "process_timing_s": 1.5}
    assert with_rounds({"profile": profile}, first)["profile"] | {} == profile | {
        "rounds": 7,
        "warmup_rounds": 2,
        "finetune_warmup_rounds": 2,
    }
    slow = {"full": CaseResult(case, samples=Samples(iterations=1, host_ms=(900.0, 900.0)))}
    assert with_rounds({"profile": profile}, slow)["profile"]["finetune_warmup_rounds"] == 1
    fast = {"full": CaseResult(case, samples=Samples(iterations=1, host_ms=(1.0, 1.0)))}
    assert with_rounds({"profile": profile}, fast)["profile"]["warmup_rounds"] == 5  # the profile's


def test_rounds_are_left_alone_when_the_round_time_is_zero():
    case = Case("inference", "mlp", "cpu", "grad", 1)
    zero = {"grad": CaseResult(case, samples=Samples(iterations=1, host_ms=(0.0, 0.0)))}
    request = {"profile": {"rounds": 30, "process_timing_s": 1.5, "min_rounds": 5}}
    assert with_rounds(request, zero) is request
