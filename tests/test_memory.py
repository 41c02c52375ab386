"""Memory accounting against byte counts computed by hand (fp32: 4 bytes per element)."""

import mmap

import pytest
import torch
from fakes import FakeCudaMemory
from torch import nn

from bench_lib.measure.devices import CudaAllocatorPeak
from bench_lib.measure.memory import RssPeak, SavedTensorCounter, StoragePeakTracker, storage_bytes


def forward_figures(model, x, ctx=torch.enable_grad):
    peak, saved = StoragePeakTracker(), SavedTensorCounter(model.parameters())
    with ctx(), peak.track(), saved.track():
        y = model(x)
    return peak, saved, y


def test_single_linear_saves_exactly_its_input():
    torch.manual_seed(0)
    lin, x = nn.Linear(4, 3), torch.randn(5, 4)
    peak, saved, _ = forward_figures(lin, x)
    assert saved.saved_bytes == 5 * 4 * 4  # the input; the weight is a parameter, not extra memory
    assert peak.peak_bytes == 5 * 3 * 4  # the output is the only new storage


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_nothing_is_saved_without_grad(ctx):
    peak, saved, _ = forward_figures(nn.Linear(4, 3), torch.randn(5, 4), ctx)
    assert saved.saved_bytes == 0 and saved.saved_tensors == 0
    assert peak.peak_bytes == 60


def test_two_layer_mlp_peak_and_saved_bytes():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    peak, saved, _ = forward_figures(model, torch.randn(5, 4))
    h = 5 * 8 * 4  # 160 bytes per hidden activation
    # after ReLU both the Linear output (its input) and the ReLU output are alive: 2 * 160
    assert peak.peak_bytes == 2 * h
    assert peak.allocated_bytes == 2 * h + 5 * 3 * 4
    # saved: the input x for the first Linear, the ReLU output (ReLU saves its result and the
    # second Linear saves the same storage as its input: counted once)
    assert saved.saved_bytes == 5 * 4 * 4 + h


def test_views_and_in_place_ops_allocate_nothing():
    x = torch.randn(16, 16)
    tracker = StoragePeakTracker()
    with tracker.track():
        x.view(-1)
        x.add_(1)
        x[2:4].mul_(2)
    assert tracker.peak_bytes == 0


def test_freed_storages_leave_the_live_total():
    tracker = StoragePeakTracker()
    with tracker.track():
        for _ in range(3):
            tmp = torch.ones(256)  # 1 KiB, the previous one is freed when tmp is rebound
        del tmp
        keep = torch.ones(128)
    assert tracker.peak_bytes == 2048  # the new one exists before the old one is released
    assert tracker.allocated_bytes == 3 * 1024 + 512
    del keep


def test_storage_bytes_counts_views_once():
    x = torch.zeros(10)
    assert storage_bytes([x, x[2:], x.view(2, 5)]) == 40


def test_saved_counter_counts_each_storage_once():
    x = torch.randn(8, requires_grad=True)
    counter = SavedTensorCounter()
    with counter.track():
        y = x * x  # saves x twice (once per operand)
    assert counter.saved_tensors == 2 and counter.saved_bytes == 32
    del y


def test_cuda_peak_is_the_allocator_peak_beyond_live_bytes_before():
    cuda = FakeCudaMemory()
    counter = CudaAllocatorPeak(0, cuda)
    with counter.track():
        cuda.alloc(512)
        cuda.alloc(1024)
        cuda.alloc(-1024)
    assert counter.peak_bytes == 1536
    assert cuda.calls == ["sync", "sync"]
    assert counter.extra == {
        "cuda_max_allocated_bytes": 2536,
        "cuda_max_reserved_bytes": 2 << 20,
        "cuda_live_before_bytes": 1000,
    }


def rss_high_water_resettable():
    import bench_lib.measure.memory as memory

    return memory._reset_rss_high_water() and memory._rss_high_water() is not None


@pytest.mark.skipif(not rss_high_water_resettable(), reason="needs Linux's /proc/self/clear_refs and VmHWM")
def test_rss_peak_sees_a_block_of_fresh_pages():
    """64 MiB of fresh anonymous pages (mmap, not malloc, whose reuse of freed memory depends on
    the process's history), each touched once: the high-water mark rises by about that much."""
    size = 64 << 20
    with RssPeak().track() as rss:
        block = mmap.mmap(-1, size)
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
        block.close()
    # the kernel's RSS counters lag by up to a few hundred KiB per thread
    assert size - (4 << 20) <= rss.delta_bytes <= size + (16 << 20)
    with RssPeak().track() as idle:
        pass
    assert idle.delta_bytes < 4 << 20


def test_rss_peak_is_unknown_where_it_cannot_be_measured(monkeypatch):
    import bench_lib.measure.memory as memory

    monkeypatch.setattr(memory, "_reset_rss_high_water", lambda: False)
    with RssPeak().track() as rss:
        block = torch.ones(1 << 20)
    assert rss.delta_bytes is None  # never a made-up figure
    del block
