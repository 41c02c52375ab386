"""Each case is measured with only its own memory live, and memory is measured once per group.

On CUDA, `cuda_max_allocated_bytes` counts everything live on the device. It used to depend on
what was measured before: grad mode's output kept its whole graph while no_grad and
inference_mode were measured, and every earlier fine-tuning variant's model and optimizer state
stayed on the device. A fake device stands in for CUDA here: at the start of each measured
block it reads what is live, like `torch.cuda.memory_allocated()`.
"""

import gc
import warnings
from contextlib import contextmanager

import pytest
import torch

from bench_lib.measure.devices import CpuDevice, CudaDevice
from bench_lib.measure.memory import storage_bytes
from bench_lib.measure.runner import run_group
from bench_lib.measure.worker import run_request
from bench_lib.models import ZOO
from bench_lib.records.cases import Case, Profile
from bench_lib.records.results import CaseResult
from bench_lib.suites.finetune.measure import measure_finetune_group
from bench_lib.suites.inference.measure import measure_inference_group

TINY = Profile(
    "t", (2,), rounds=2, warmup_rounds=1, finetune_rounds=2, finetune_warmup_rounds=1, iterations=1
)
MODES = ["grad", "no_grad", "inference_mode"]


class LiveTensors:
    """A stand-in for the CUDA allocator's counters (written here for this test; a shared fake
    belongs in tests/fakes.py): when a measured block starts, the bytes of every distinct
    storage behind a live tensor the garbage collector can find (`cuda_live_before_bytes`), and
    how many of those tensors carry an autograd graph."""

    def __init__(self, log):
        self.peak_bytes = 0
        self.extra = {}
        self._log = log

    @contextmanager
    def track(self):
        gc.collect()
        with warnings.catch_warnings():  # isinstance on every object wakes deprecated aliases
            warnings.simplefilter("ignore")
            tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
        live = storage_bytes(tensors)
        self._log.append({"live": live, "with_graph": sum(t.grad_fn is not None for t in tensors)})
        self.extra = {"cuda_live_before_bytes": live}
        yield self


class FakeGpu(CpuDevice):
    def __init__(self):
        super().__init__()
        self.log = []

    def peak_counter(self):
        return LiveTensors(self.log)


def test_no_grad_and_inference_mode_are_measured_without_grad_modes_graph():
    device = FakeGpu()
    results = measure_inference_group(ZOO["mlp"], device, 2, TINY, MODES)
    assert [r.status for r in results.values()] == ["ok"] * 3
    assert [entry["with_graph"] for entry in device.log] == [0, 0, 0]
    live = {m: results[m].metrics["cuda_live_before_bytes"] for m in MODES}
    # the reference output for the equality check is computed (and detached) before any mode is
    # measured, so every mode starts with the same bytes live: nothing of another mode's forward
    assert live["no_grad"] == live["inference_mode"] == live["grad"]


def finetune_live_before(variants):
    results = measure_finetune_group(ZOO["mlp"], FakeGpu(), 2, TINY, variants)
    assert all(r.ok for r in results.values()), {v: r.error for v, r in results.items()}
    return {v: r.metrics for v, r in results.items()}


def test_fine_tuning_variants_are_measured_alone_whatever_their_order():
    order = ["sgd/frozen_1", "sgd/frozen_3", "sgd/frozen_nograd", "adamw/full", "adamw/frozen_3"]
    forward = finetune_live_before(order)
    backward = finetune_live_before(order[::-1])
    assert {v: m["cuda_live_before_bytes"] for v, m in forward.items()} == {
        v: m["cuda_live_before_bytes"] for v, m in backward.items()
    }
    # what is live besides the variant's own optimizer state is the same for every variant: no
    # earlier variant's model, gradients or optimizer state
    others = {m["cuda_live_before_bytes"] - m["mem_optimizer_state_bytes"] for m in forward.values()}
    assert len(others) == 1


def test_checkpoint_and_lora_variants_are_measured_alone_whatever_their_order():
    order = ["sgd/checkpoint", "sgd/lora", "adamw/lora", "adamw/checkpoint"]
    forward = finetune_live_before(order)
    backward = finetune_live_before(order[::-1])
    for column in ("cuda_live_before_bytes", "mem_activations_bytes", "mem_peak_bytes"):
        assert {v: m[column] for v, m in forward.items()} == {v: m[column] for v, m in backward.items()}
    # live besides the variant's own parameters (LoRA's adapters) and optimizer state: the same
    others = {
        m["cuda_live_before_bytes"] - m["mem_optimizer_state_bytes"] - m["mem_params_bytes"]
        for m in forward.values()
    }
    assert len(others) == 1


def test_memory_is_traced_by_the_first_two_worker_processes_only():
    cases = {m: Case("inference", "mlp", "cpu", m, 2) for m in ("grad", "no_grad")}
    request = {
        "cases": [vars(c) for c in cases.values()], "model": "mlp",
        "profile": {**vars(TINY), "batch_sizes": [2], "models": []}, "threads": 1, "pin_malloc": True,
    }  # fmt: skip
    without = run_request({**request, "memory": False})
    assert "mem_peak_bytes" not in without["grad"].metrics and without["grad"].modules == ()
    assert without["grad"].metrics["mem_saved_for_backward_bytes"] > 0  # the mode check still has it
    pooled, _, _ = run_group(request, cases, 3)
    grad = pooled["grad"]
    assert grad.samples.process == (0, 0, 1, 1, 2, 2)
    assert grad.metrics["mem_peak_bytes"] > 0 and grad.modules
    assert sum(m.mem_peak_bytes for m in grad.modules) == grad.metrics["mem_peak_bytes"]
    # the first two processes traced memory, and they agreed
    assert grad.metrics["mem_disagreement"] == ""


def test_module_rows_survive_the_trip_from_a_worker():
    result = measure_inference_group(ZOO["mlp"], CpuDevice(), 2, TINY, ["grad"])["grad"]
    again = CaseResult.from_dict(result.to_dict())
    assert again.modules == result.modules and again.modules
    rows = again.module_rows()
    assert rows[0]["model"] == "mlp" and rows[0]["mode"] == "grad" and "mem_peak_bytes" in rows[0]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@CUDA
def test_on_cuda_the_trace_is_the_allocator_peak_and_grad_modes_graph_is_gone():
    device = CudaDevice(torch.cuda.current_device())
    results = measure_inference_group(ZOO["mlp"], device, 8, TINY, MODES)
    for mode in MODES:
        m = results[mode].metrics
        assert m["mem_peak_bytes"] == m["cuda_max_allocated_bytes"] - m["cuda_live_before_bytes"], mode
        assert sum(x.mem_peak_bytes for x in results[mode].modules) == m["mem_peak_bytes"]
    live = {m: results[m].metrics["cuda_live_before_bytes"] for m in MODES}
    # only the detached reference output (8 x 10 fp32, one 512-byte block) is added
    assert live["no_grad"] - live["grad"] == live["inference_mode"] - live["grad"] == 512


@CUDA
def test_on_cuda_fine_tuning_variants_do_not_see_each_other():
    device = CudaDevice(torch.cuda.current_device())
    order = ["sgd/frozen_1", "sgd/frozen_3", "adamw/full", "adamw/frozen_3"]
    runs = [measure_finetune_group(ZOO["mlp"], device, 8, TINY, o) for o in (order, order[::-1])]
    for results in runs:
        assert all(r.ok for r in results.values())
        for r in results.values():
            m = r.metrics
            assert m["mem_peak_bytes"] == m["cuda_max_allocated_bytes"] - m["cuda_live_before_bytes"]
    columns = ("cuda_live_before_bytes", "cuda_max_allocated_bytes", "mem_peak_bytes")
    first, second = ({v: [r.metrics[c] for c in columns] for v, r in run.items()} for run in runs)
    assert first == second
