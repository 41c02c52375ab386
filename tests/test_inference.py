"""One inference group end to end in-process, with real and with deliberately broken models."""

import pytest
import torch
from torch import nn

from bench_lib.cases import Profile
from bench_lib.devices import CpuDevice
from bench_lib.inference import measure_inference_group
from bench_lib.models import ZOO, ModelSpec
from bench_lib.results import with_ratios

TINY = Profile("t", (1,), rounds=3, warmup_rounds=1, iterations=1)
MODES = ["grad", "no_grad", "inference_mode"]


def run(spec, modes=MODES, batch_size=2):
    results = measure_inference_group(spec, CpuDevice(), batch_size, TINY, modes)
    return with_ratios(results, "grad", "latency_ratio_to_grad")


def spec_of(module_factory, inputs=lambda b: (torch.randn(b, 4),)):
    return ModelSpec(name="custom", build=module_factory, make_inputs=inputs)


def test_mlp_group_measures_every_mode():
    results = run(ZOO["mlp"])
    assert [r.status for r in results.values()] == ["ok"] * 3
    grad, no_grad, inference = (results[m].row() for m in MODES)
    assert grad["latency_ratio_to_grad"] == 1.0
    assert no_grad["latency_ratio_to_grad"] > 0 and inference["rounds"] == 3
    assert grad["mem_saved_for_backward_bytes"] > 0
    assert no_grad["mem_saved_for_backward_bytes"] == inference["mem_saved_for_backward_bytes"] == 0
    # batch 2, MLP 256-512-512-512-10: grad keeps the input and each ReLU output alive
    assert grad["mem_saved_for_backward_bytes"] == 2 * 4 * (256 + 3 * 512)
    assert grad["mem_peak_bytes"] > no_grad["mem_peak_bytes"]
    assert grad["throughput_items_per_s"] == pytest.approx(2 / (grad["latency_ms_median"] / 1e3))


def test_asking_for_one_mode_still_measures_grad_for_the_ratio():
    results = run(ZOO["polynomial"], modes=["no_grad"])
    assert list(results) == ["grad", "no_grad"]
    assert results["no_grad"].row()["latency_ratio_to_grad"] > 0


def test_a_model_that_cannot_be_built_fails_every_case():
    def broken():
        raise ValueError("no such layer")

    results = run(spec_of(broken))
    assert {r.status for r in results.values()} == {"failed"}
    assert results["grad"].error == "ValueError: no such layer"


class GradLeak(nn.Module):
    """Re-enables grad inside forward: under no_grad its output still has a grad_fn."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        if torch.is_inference_mode_enabled():
            return self.lin(x)
        with torch.enable_grad():
            return self.lin(x)


def test_a_mode_semantics_violation_fails_that_case_with_a_message():
    results = run(spec_of(GradLeak))
    assert results["grad"].ok and results["inference_mode"].ok
    assert results["no_grad"].status == "failed"
    assert "grad_fn" in results["no_grad"].error
    assert results["no_grad"].samples is None  # never recorded as a good number


class ModeDependent(nn.Module):
    """Computes something else without grad: the outputs-equal check must catch it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        y = self.lin(x)
        return y if torch.is_grad_enabled() else y + 1


def test_outputs_that_differ_between_modes_fail():
    results = run(spec_of(ModeDependent))
    assert results["grad"].ok
    assert "differs from grad mode" in results["no_grad"].error


class NoInference(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        if torch.is_inference_mode_enabled():
            raise RuntimeError("custom op has no inference kernel")
        return self.lin(x)


def test_a_forward_failing_under_inference_mode_fails_only_that_case():
    results = run(spec_of(NoInference))
    assert results["grad"].ok and results["no_grad"].ok
    assert results["inference_mode"].status == "failed"
    assert "no inference kernel" in results["inference_mode"].error


class OutOfMemoryAfterWarmup(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 8 and not torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return self.lin(x)


def test_out_of_memory_during_timing_is_recorded_as_oom_and_others_go_on():
    results = run(spec_of(OutOfMemoryAfterWarmup))
    assert results["grad"].ok
    statuses = {results[m].status for m in ("no_grad", "inference_mode")}
    assert "oom" in statuses
    oom = next(r for r in results.values() if r.status == "oom")
    assert oom.error.startswith("OutOfMemoryError: CUDA out of memory")
    assert oom.metrics["mem_saved_for_backward_bytes"] == 0  # measured before it failed


def test_compiled_variants_share_the_group_and_report_compile_time():
    from bench_lib.cases import COMPILED, Case
    from bench_lib.session import _case_of

    case = Case("inference", "mlp", "cpu", "no_grad", 4, compile=COMPILED)
    assert case.id == "mlp-cpu-b4-no_grad-compiled" and case.variant == "no_grad+compile"
    assert case.group == Case("inference", "mlp", "cpu", "", 4)
    assert _case_of(case.group, "no_grad+compile") == case
    assert _case_of(case.group, "no_grad").compile == ""


@pytest.mark.slow
def test_a_compiled_mode_is_timed_against_eager_grad():
    from bench_lib.cases import Profile
    from bench_lib.devices import CpuDevice
    from bench_lib.inference import measure_inference_group
    from bench_lib.models import ZOO

    profile = Profile("t", (2,), rounds=3, warmup_rounds=1, iterations=1, energy_seconds=0)
    results = measure_inference_group(ZOO["mlp"], CpuDevice(), 2, profile, ["grad", "no_grad+compile"])
    assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
    compiled = results["no_grad+compile"]
    assert compiled.case.compile == "inductor" and compiled.metrics["compile_s"] > 0
    assert compiled.metrics["mem_peak_bytes"] > 0  # the allocator trace sees inside compiled code
    assert compiled.modules == ()  # compiled code runs no module hooks: no attribution
    assert "compile_s" not in results["grad"].metrics
