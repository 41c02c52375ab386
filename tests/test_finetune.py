"""Fine-tuning strategies and memory by category, against byte counts computed by hand."""

import pytest
import torch

from bench_lib.cases import Profile
from bench_lib.devices import CpuDevice
from bench_lib.finetune import (
    NOGRAD,
    Strategy,
    TrainStep,
    measure_finetune_group,
    strategies,
    strategy_names,
    template,
)
from bench_lib.models import ZOO

F32 = 4
DEVICE = CpuDevice()
TINY = Profile("t", (2,), rounds=3, warmup_rounds=1, finetune_rounds=3, iterations=1)
# nn.functional.cross_entropy = log_softmax (saves its b x 10 fp32 result) + nll_loss (saves the
# int64 target and a one-element fp32 total_weight)
LOSS_SAVED = lambda b: b * 10 * F32 + b * 8 + F32  # noqa: E731


def step_for(strategy, optimizer="sgd", model="mlp", batch_size=2):
    step = TrainStep(template(ZOO[model], batch_size), strategy, optimizer, DEVICE)
    step()  # first step creates the optimizer state
    return step, step.measure_memory(DEVICE)


def trainable_bytes(step):
    return sum(p.numel() * F32 for p in step.trainable)


def test_strategies_for_a_model():
    assert [s.name for s in strategies(3)] == ["full", "frozen_1", "frozen_3", "frozen_nograd"]
    assert [s.name for s in strategies(4)] == ["full", "frozen_2", "frozen_4", "frozen_nograd"]
    assert [s.name for s in strategies(1)] == ["full", "frozen_1", "frozen_nograd"]
    assert strategy_names(ZOO["polynomial"]) == []  # no blocks: not fine-tuned


@pytest.mark.parametrize("strategy", strategies(3), ids=lambda s: s.name)
def test_gradients_take_exactly_the_bytes_of_the_trainable_parameters(strategy):
    step, mem = step_for(strategy)
    assert mem["mem_grads_bytes"] == trainable_bytes(step)
    assert mem["mem_params_bytes"] == sum(p.numel() * F32 for p in step.model.parameters())
    assert all(p.grad is None for p in step.model.parameters())  # zero_grad(set_to_none=True)


def test_sgd_momentum_keeps_one_buffer_per_trainable_parameter():
    step, mem = step_for(Strategy("frozen_1", 1), "sgd")
    assert mem["mem_optimizer_state_bytes"] == trainable_bytes(step)


def test_adamw_keeps_two_buffers_and_a_step_counter_per_trainable_parameter():
    step, mem = step_for(Strategy("full", 0), "adamw")
    counters = len(step.trainable) * F32  # `step` is a one-element fp32 tensor per parameter
    assert mem["mem_optimizer_state_bytes"] == 2 * trainable_bytes(step) + counters


def test_mlp_activation_bytes_by_hand():
    b, hidden, inputs = 2, 512, 256
    _, full = step_for(Strategy("full", 0))
    # the input x (first Linear), each block's ReLU output (also the next Linear's input), the loss
    assert full["mem_activations_bytes"] == b * inputs * F32 + 3 * b * hidden * F32 + LOSS_SAVED(b)
    _, frozen_1 = step_for(Strategy("frozen_1", 1))
    # the first Linear is frozen and x needs no grad: x is not saved
    assert frozen_1["mem_activations_bytes"] == 3 * b * hidden * F32 + LOSS_SAVED(b)


def test_frozen_nograd_saves_nothing_inside_the_trunk():
    b = 2
    _, nograd = step_for(Strategy(NOGRAD, 3, nograd=True))
    assert nograd["mem_activations_bytes"] == b * 512 * F32 + LOSS_SAVED(b)  # only the head's input
    _, frozen_3 = step_for(Strategy("frozen_3", 3))
    assert frozen_3["mem_activations_bytes"] == nograd["mem_activations_bytes"]


@pytest.mark.parametrize("model", ["mlp", "cnn", "transformer"])
def test_group_checks_pass_and_figures_are_consistent(model):
    results = measure_finetune_group(ZOO[model], DEVICE, 2, TINY, ["sgd/frozen_nograd", "adamw/full"])
    assert set(results) == {"sgd/full", "sgd/frozen_nograd", "adamw/full"}
    assert all(r.ok for r in results.values()), [r.error for r in results.values()]
    full, nograd = results["sgd/full"].metrics, results["sgd/frozen_nograd"].metrics
    assert nograd["trainable_params"] < full["trainable_params"] == full["total_params"]
    assert nograd["mem_activations_bytes"] < full["mem_activations_bytes"]
    assert results["adamw/full"].samples.rounds == 3


def test_a_broken_check_fails_the_case(monkeypatch):
    import bench_lib.finetune as ft

    monkeypatch.setattr(ft, "nograd_mismatch", lambda *a: "frozen_nograd loss 1 != frozen_3 loss 2")
    results = measure_finetune_group(ZOO["mlp"], DEVICE, 2, TINY, ["sgd/frozen_nograd"])
    assert results["sgd/frozen_nograd"].status == "failed"
    assert results["sgd/full"].ok


def test_frozen_parameters_that_change_are_caught():
    step, _ = step_for(Strategy("frozen_1", 1))
    frozen = [p.detach().clone() for p in step.frozen]
    trainable = [p.detach().clone() for p in step.trainable]
    step()
    assert ft_check(step, frozen, trainable) is None
    with torch.no_grad():
        step.frozen[0].add_(1.0)
    assert ft_check(step, frozen, trainable) == "a frozen parameter changed"


def test_a_step_that_trains_nothing_is_caught():
    step, _ = step_for(Strategy("frozen_1", 1))
    frozen = [p.detach().clone() for p in step.frozen]
    trainable = [p.detach().clone() for p in step.trainable]
    n = len(step.trainable)
    assert ft_check(step, frozen, trainable) == f"none of the {n} trainable parameters changed"


def ft_check(step, frozen, trainable):
    from bench_lib.finetune import check_after_steps

    return check_after_steps(step, frozen, trainable)


def test_categories_agree_with_torch_mem_tracker():
    """Cross-check against torch.distributed._tools.mem_tracker.MemTracker (a private torch API;
    skipped when it is missing or changed)."""
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    # MemTracker hooks every parameter's gradient, so it cannot follow frozen ones: `full` only
    step, mine = step_for(Strategy("full", 0), "adamw")
    try:
        tracker = mem_tracker.MemTracker()
        tracker.track_external(step.model, step.optimizer)
        with tracker:
            step()
        peak, after = tracker.get_tracker_snapshot("peak"), tracker.get_tracker_snapshot()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"MemTracker unusable here: {exc}")

    def by_kind(snapshot):
        (per_device,) = snapshot.values()
        return {getattr(k, "name", k): v for k, v in per_device.items()}

    assert by_kind(after)["PARAM"] == mine["mem_params_bytes"]
    assert by_kind(after)["OPT"] == mine["mem_optimizer_state_bytes"]  # state left after the step
    assert by_kind(peak)["GRAD"] == mine["mem_grads_bytes"]  # gradients at the step's peak
