"""The round loop, with a fake clock (CPU) and fake CUDA events: no real timing, no GPU."""

import pytest

from bench_lib.devices import CpuDevice, CudaDevice
from bench_lib.timing import Samples, Variant, measure_interleaved


class FakeClock:
    """A clock that only moves when the code under test 'works'."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float):
        def fn():
            self.now += seconds

        return fn


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


class FakeEvent:
    def __init__(self, log, clock):
        self.log, self.clock, self.t = log, clock, None

    def record(self):
        self.t = self.clock.now

    def synchronize(self):
        self.log.append("event-sync")

    def elapsed_time(self, end):  # milliseconds, like torch.cuda.Event
        return (end.t - self.t) * 1e3


class FakeCuda:
    def __init__(self, log):
        self.log = log

    def synchronize(self, index=None):
        self.log.append("device-sync")


def test_cuda_rounds_use_events_with_one_sync_per_round_not_per_iteration():
    log, clock = [], FakeClock()
    device = CudaDevice(0, clock=clock, event_factory=lambda: FakeEvent(log, clock), cuda=FakeCuda(log))

    def kernel():
        log.append("call")
        clock.now += 0.001

    out = measure_interleaved([Variant("k", kernel)], device, rounds=2, warmup_rounds=0, iterations=3)
    assert log == ["call", "call", "call", "event-sync"] * 2
    samples = out.samples["k"]
    assert samples.device_ms == pytest.approx((1.0, 1.0))
    assert samples.primary_ms == samples.device_ms
    assert samples.stats().median == pytest.approx(1.0)


def test_samples_validate_their_shape():
    with pytest.raises(ValueError):
        Samples(iterations=0, host_ms=(1.0,))
    with pytest.raises(ValueError):
        Samples(iterations=1, host_ms=())
    with pytest.raises(ValueError):
        Samples(iterations=1, host_ms=(1.0, 2.0), device_ms=(1.0,))
