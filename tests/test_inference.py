"""One inference group end to end in-process, with real and with deliberately broken models."""

import pytest
import torch
from torch import nn

from bench_lib.measure.devices import CpuDevice
from bench_lib.models import ZOO, ModelSpec
from bench_lib.records.cases import Profile
from bench_lib.records.results import with_ratios
from bench_lib.suites.inference.measure import measure_inference_group

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


class WrongWithoutGraph(nn.Module):
    """Detaches its output under grad (the grad case fails) and adds 1 without grad: the other
    modes must still be compared, with a reference that does not depend on the grad case."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        y = self.lin(x)
        return y.detach() if torch.is_grad_enabled() else y + 1


def test_outputs_are_compared_even_when_the_grad_case_fails():
    results = run(spec_of(WrongWithoutGraph))
    assert results["grad"].error == "grad: output has no grad_fn although the model has trainable parameters"
    for mode in ("no_grad", "inference_mode"):
        assert results[mode].status == "failed"
        assert results[mode].error.startswith("output 0 differs from grad mode's (max abs difference 1)")


class NoGradForward(nn.Module):
    """Cannot run with grad; under inference_mode it computes something else than no_grad."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        if torch.is_grad_enabled():
            raise RuntimeError("no backward formula")
        return self.lin(x) * (2 if torch.is_inference_mode_enabled() else 1)


def test_when_the_grad_forward_fails_the_reference_comes_from_the_next_mode_and_says_so():
    results = run(spec_of(NoGradForward))
    assert results["grad"].error == "RuntimeError: no backward formula"
    assert results["no_grad"].ok
    assert "output 0 differs from no_grad mode's" in results["inference_mode"].error


class SavesWithoutGrad(nn.Module):
    """Under no_grad runs its layer with grad on and returns the result detached: no grad_fn on
    the output, but autograd saved tensors for a backward that will never come."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        if torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return self.lin(x)
        with torch.enable_grad():
            return self.lin(x).detach()


def test_bytes_saved_for_backward_without_grad_fail():
    results = run(spec_of(SavesWithoutGrad))
    assert results["grad"].ok and results["inference_mode"].ok
    # nn.Linear saves its input: batch 2 x 4 features x 4 bytes
    assert results["no_grad"].error == "no_grad: 32 bytes were saved for backward (expected 0)"


class NormalTensorsUnderInferenceMode(nn.Module):
    """Leaves inference mode inside forward: its output is a normal tensor."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        with torch.inference_mode(False), torch.no_grad():
            return self.lin(x)


def test_an_inference_mode_output_that_is_not_an_inference_tensor_fails():
    results = run(spec_of(NormalTensorsUnderInferenceMode))
    assert results["no_grad"].ok
    assert results["inference_mode"].error == "inference_mode: output is not an inference tensor"


class HidesItsGraph(nn.Module):
    """Computes its layer without autograd and adds a trainable zero: under grad the output has
    a grad_fn, but nothing of the real computation is recorded (nothing saved)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.zero = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        with torch.no_grad():
            y = self.lin(x)
        return y + self.zero


def test_a_grad_forward_that_records_nothing_fails():
    results = run(spec_of(HidesItsGraph))
    assert (
        results["grad"].error
        == "grad: nothing was saved for backward although the model has trainable parameters"
    )
    assert results["no_grad"].ok and results["inference_mode"].ok


class ReturnsNothing(nn.Module):
    def forward(self, x):
        return None


def test_a_model_that_returns_no_tensor_fails_every_mode():
    results = run(spec_of(ReturnsNothing))
    assert {m: r.error for m, r in results.items()} == {
        m: f"{m}: the model returned no tensor" for m in MODES
    }


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
    from bench_lib.records.cases import COMPILED, Case

    case = Case("inference", "mlp", "cpu", "no_grad", 4, compile=COMPILED)
    assert case.id == "mlp-cpu-b4-no_grad-compiled" and case.variant == "no_grad+compile"
    assert case.group == Case("inference", "mlp", "cpu", "", 4)
    assert case.group.with_variant("no_grad+compile") == case
    assert case.group.with_variant("no_grad").compile == ""


@pytest.mark.slow
def test_a_compiled_mode_is_timed_against_eager_grad():
    from bench_lib.measure.devices import CpuDevice
    from bench_lib.models import ZOO
    from bench_lib.records.cases import Profile
    from bench_lib.suites.inference.measure import measure_inference_group

    profile = Profile("t", (2,), rounds=3, warmup_rounds=1, iterations=1, energy_seconds=0)
    results = measure_inference_group(ZOO["mlp"], CpuDevice(), 2, profile, ["grad", "no_grad+compile"])
    assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}
    compiled = results["no_grad+compile"]
    assert compiled.case.compile == "inductor" and compiled.metrics["compile_s"] > 0
    assert compiled.metrics["mem_peak_bytes"] > 0  # the allocator trace sees inside compiled code
    assert compiled.modules == ()  # compiled code runs no module hooks: no attribution
    assert "compile_s" not in results["grad"].metrics
