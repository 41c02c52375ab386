"""Fine-tuning strategies and memory by category, against byte counts computed by hand."""

from pathlib import Path

import pytest
import torch
from torch import nn

import bench_lib.suites.finetune.measure as ft
from bench_lib.measure.devices import CpuDevice
from bench_lib.models import ZOO, ModelInstance, ModelSpec, StagedModel, blocks_of, get_model
from bench_lib.records.cases import Profile
from bench_lib.suites.finetune.measure import (
    NOGRAD,
    Strategy,
    TrainStep,
    check_after_steps,
    frozen_state,
    measure_finetune_group,
    promise,
    strategies,
    strategy_names,
    template,
    trainable_state,
)

F32 = 4
TRAINABLE = str(Path(__file__).resolve().parent.parent / "examples" / "custom_model.py") + ":make_trainable"
DEVICE = CpuDevice()
TINY = Profile("t", (2,), rounds=3, warmup_rounds=1, finetune_rounds=3, iterations=1)
# nn.functional.cross_entropy = log_softmax (saves its b x 10 fp32 result) + nll_loss (saves the
# int64 target and a one-element fp32 total_weight)
LOSS_SAVED = lambda b: b * 10 * F32 + b * 8 + F32  # noqa: E731


def step_for(strategy, optimizer="sgd", model="mlp", batch_size=2):
    step = TrainStep(template(ZOO[model], batch_size), strategy, optimizer, DEVICE)
    step()  # first step creates the optimizer state
    return step, step.measure_memory(DEVICE)


# The zoo MLP (256-512-512-512-10) counted by hand: weights and biases of each trunk block, the head
MLP_BLOCKS = (256 * 512 + 512, 512 * 512 + 512, 512 * 512 + 512)
MLP_HEAD = 512 * 10 + 10
MLP_TRAINABLE = {
    "full": sum(MLP_BLOCKS) + MLP_HEAD,
    "frozen_1": sum(MLP_BLOCKS[1:]) + MLP_HEAD,
    "frozen_3": MLP_HEAD,
    NOGRAD: MLP_HEAD,
    "checkpoint": sum(MLP_BLOCKS) + MLP_HEAD,  # checkpointing trains what it would train without
    "frozen_1+checkpoint": sum(MLP_BLOCKS[1:]) + MLP_HEAD,
}
MLP_TENSORS = {"full": 8, "frozen_1": 6, "frozen_3": 2, NOGRAD: 2}  # weight and bias per Linear


def test_strategies_for_a_model():
    freezing = lambda n: [s.name for s in strategies(n) if not (s.checkpoint or s.lora)]  # noqa: E731
    assert freezing(3) == ["full", "frozen_1", "frozen_3", "frozen_nograd"]
    assert freezing(4) == ["full", "frozen_2", "frozen_4", "frozen_nograd"]
    assert freezing(1) == ["full", "frozen_1", "frozen_nograd"]
    assert strategy_names(ZOO["polynomial"]) == []  # no blocks: not fine-tuned
    # checkpoint and lora: tests/test_finetune_strategies.py


@pytest.mark.parametrize("strategy", [s for s in strategies(3) if not s.lora], ids=lambda s: s.name)
def test_gradients_take_exactly_the_bytes_of_the_trainable_parameters(strategy):
    step, mem = step_for(strategy)
    assert mem["mem_grads_bytes"] == MLP_TRAINABLE[strategy.name] * F32
    assert mem["mem_params_bytes"] == (sum(MLP_BLOCKS) + MLP_HEAD) * F32
    assert all(p.grad is None for p in step.model.parameters())  # zero_grad(set_to_none=True)


def test_sgd_momentum_keeps_one_buffer_per_trainable_parameter():
    _, mem = step_for(Strategy("frozen_1", 1), "sgd")
    assert mem["mem_optimizer_state_bytes"] == MLP_TRAINABLE["frozen_1"] * F32


def test_adamw_keeps_two_buffers_and_a_step_counter_per_trainable_parameter():
    _, mem = step_for(Strategy("full", 0), "adamw")
    counters = MLP_TENSORS["full"] * F32  # `step` is a one-element fp32 tensor per parameter
    assert mem["mem_optimizer_state_bytes"] == 2 * MLP_TRAINABLE["full"] * F32 + counters


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


# -- each promise of the fine-tuning suite, shown failing on a deliberately broken case ----------

WIDTH, CLASSES = 8, 3


class Net(StagedModel):
    """A small staged model: the given trunk blocks, then a Linear head."""

    def __init__(self, *blocks):
        super().__init__()
        self.trunk_blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(WIDTH, CLASSES)


def linear_block():
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU())


def spec_of(build, name="broken"):
    def factory(batch_size):
        model = build()
        return ModelInstance(
            model,
            torch.randn(batch_size, WIDTH),
            blocks=blocks_of(model),
            loss=nn.functional.cross_entropy,
            target=torch.randint(0, CLASSES, (batch_size,)),
        )

    return ModelSpec(name=name, factory=factory)


def run_group(spec, variants):
    return measure_finetune_group(spec, DEVICE, 4, TINY, variants)


def failed_with(result, *fragments):
    assert result.status == "failed", f"expected a failure, got {result.status}"
    assert all(f in result.error for f in fragments), result.error
    assert result.samples is None  # never recorded as a good number
    return True


def test_a_healthy_small_model_passes_every_check():
    results = run_group(
        spec_of(lambda: Net(linear_block(), linear_block())), ["sgd/frozen_1", "sgd/frozen_nograd"]
    )
    assert all(r.ok for r in results.values()), {k: r.error for k, r in results.items()}


class FreezesItsTrunk(Net):
    """Its `train()` freezes the trunk: a `full` step then trains the head only."""

    def train(self, mode=True):
        super().train(mode)
        self.trunk_blocks.requires_grad_(False)
        return self


def test_a_full_step_that_silently_freezes_the_trunk_fails():
    results = run_group(spec_of(lambda: FreezesItsTrunk(linear_block(), linear_block())), ["sgd/full"])
    assert failed_with(results["sgd/full"], "full: 4 parameters it should train do not require grad")
    assert "trunk_blocks.0.0.bias" in results["sgd/full"].error


class DetachedTrunk(Net):
    """Cuts the graph after the first block: its parameters never receive a gradient."""

    def forward(self, x):
        return self.forward_stages(self.trunk_blocks[0](x).detach(), start=1)


def test_trainable_parameters_that_receive_no_gradient_fail():
    results = run_group(spec_of(lambda: DetachedTrunk(linear_block(), linear_block())), ["sgd/frozen_1"])
    assert failed_with(
        results["sgd/full"],
        "full: 2 trainable parameters receive no gradient: trunk_blocks.0.0.bias, trunk_blocks.0.0.weight",
    )
    assert results["sgd/frozen_1"].ok  # the detached block is frozen there: nothing promised


def test_trainable_parameters_the_optimizer_skips_fail(monkeypatch):
    """An optimizer that updates only the head: the trunk gets nonzero gradients and stays put."""
    head_only = lambda params: torch.optim.SGD(params[-2:], lr=0.01, momentum=0.9)  # noqa: E731
    monkeypatch.setitem(ft.OPTIMIZERS, "sgd", head_only)
    results = run_group(ZOO["mlp"], ["sgd/frozen_1"])
    assert failed_with(results["sgd/full"], "full: 6 trainable parameters did not change")
    assert failed_with(results["sgd/frozen_1"], "frozen_1: 4 trainable parameters did not change")


class StuckInTrain(nn.BatchNorm1d):
    """Ignores `eval()`: keeps updating its running statistics even in a frozen block."""

    def train(self, mode=True):
        return super().train(True)


def bn_block():
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), StuckInTrain(WIDTH), nn.ReLU())


def test_batch_norm_statistics_that_move_in_a_frozen_block_fail():
    results = run_group(spec_of(lambda: Net(bn_block(), bn_block())), ["sgd/frozen_1", "sgd/frozen_2"])
    assert results["sgd/full"].ok  # trainable blocks update their statistics: allowed
    assert failed_with(
        results["sgd/frozen_1"],
        "frozen_1: 3 buffers of frozen blocks changed",
        "trunk_blocks.0.1.num_batches_tracked, trunk_blocks.0.1.running_mean, trunk_blocks.0.1.running_var",
    )
    assert failed_with(results["sgd/frozen_2"], "frozen_2: 6 buffers of frozen blocks changed")


def test_frozen_blocks_run_in_eval_and_keep_their_batch_norm_statistics():
    """The policy: frozen blocks in eval() (BatchNorm uses and keeps its running statistics, no
    dropout), the rest in train(). The zoo CNN has BatchNorm in every block."""
    step = TrainStep(template(ZOO["cnn"], 4), Strategy("frozen_2", 2), "sgd", DEVICE)
    frozen = [m for block in step.frozen_modules for m in block.modules()]
    bns = [m for m in step.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 9 and sum(m in frozen for m in bns) == 3  # stem 1 + first block 2
    assert all(not m.training for m in frozen) and all(m.training for m in bns if m not in frozen)
    before = {n: b.clone() for n, b in step.model.named_buffers()}
    for _ in range(2):
        step()
    moved = {n.rsplit(".", 1)[0] for n, b in step.model.named_buffers() if not torch.equal(b, before[n])}
    assert moved == {n for n, m in step.model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.training}


class ShrinksItsWeights(nn.Module):
    """Changes its own weight in forward (a hand-made weight decay), frozen or not."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        with torch.no_grad():
            self.lin.weight.mul_(0.99)
        return torch.relu(self.lin(x))


def test_frozen_parameters_that_change_fail():
    results = run_group(spec_of(lambda: Net(ShrinksItsWeights(), linear_block())), ["sgd/frozen_1"])
    assert failed_with(
        results["sgd/frozen_1"], "frozen_1: 1 frozen parameters changed: trunk_blocks.0.lin.weight"
    )


class UnfreezesItself(nn.Module):
    """Sets requires_grad on its own parameters in forward: frozen, it still gets gradients."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        self.lin.requires_grad_(True)
        return torch.relu(self.lin(x))


def test_frozen_parameters_that_require_grad_again_fail():
    results = run_group(spec_of(lambda: Net(UnfreezesItself(), linear_block())), ["sgd/frozen_1"])
    assert failed_with(results["sgd/frozen_1"], "frozen_1: 2 parameters it should freeze require grad")


class NotANumber(Net):
    def forward(self, x):
        return super().forward(x) * float("nan")


def test_a_loss_that_is_not_finite_fails():
    results = run_group(spec_of(lambda: NotANumber(linear_block())), ["sgd/full"])
    assert failed_with(results["sgd/full"], "FloatingPointError: loss is nan")


class LeaksAGraph(nn.Module):
    """Turns autograd back on inside its forward: under no_grad it still records a graph."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        with torch.enable_grad():
            return torch.relu(self.lin(x))


def test_a_frozen_block_that_leaks_a_graph_under_no_grad_fails_frozen_nograd():
    """With inputs that need no grad and frozen weights, this block records nothing either way,
    so the same loss and gradients as frozen_2 cannot show it: the no_grad probe does."""
    results = run_group(spec_of(lambda: Net(linear_block(), LeaksAGraph())), ["sgd/frozen_nograd"])
    assert failed_with(
        results["sgd/frozen_nograd"], "frozen_nograd: autograd saved", "inside the frozen blocks"
    )
    assert results["sgd/full"].ok


def test_a_frozen_nograd_that_forgets_no_grad_fails(monkeypatch):
    """Not a StagedModel, so no_grad comes from forward hooks: without them the trunk runs with
    autograd on (and still computes the same loss and gradients as frozen_4)."""

    class Forgets:
        def __init__(self, blocks):
            pass

    monkeypatch.setattr(ft, "_NoGradBlocks", Forgets)
    results = measure_finetune_group(get_model(TRAINABLE), DEVICE, 2, TINY, ["sgd/frozen_nograd"])
    assert failed_with(results["sgd/frozen_nograd"], "frozen_nograd: autograd saved")
    assert results["sgd/full"].ok


def test_the_strategy_checks_run_where_asked_and_by_default_with_memory():
    """They are deterministic, so a group's first two processes run them (`checks`, which
    `runner.run_group` sets with `memory`) and its later ones only time: the same broken
    frozen_nograd fails where checked and is timed where not (whose pooled result the first
    two fail anyway, see `runner.pool`)."""
    spec = spec_of(lambda: Net(linear_block(), LeaksAGraph()))
    checked = measure_finetune_group(spec, DEVICE, 4, TINY, ["sgd/frozen_nograd"], memory=False, checks=True)
    later = measure_finetune_group(spec, DEVICE, 4, TINY, ["sgd/frozen_nograd"], memory=False)
    assert failed_with(checked["sgd/frozen_nograd"], "frozen_nograd: autograd saved")
    assert later["sgd/frozen_nograd"].ok and later["sgd/frozen_nograd"].samples is not None


class AddsABias(nn.Module):
    """A frozen block that turns autograd back on for an addition (which saves nothing for
    backward): only the requires_grad of its output shows that no_grad did not hold."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(WIDTH))

    def forward(self, x):
        with torch.enable_grad():
            return x + self.bias


def test_a_frozen_block_whose_output_requires_grad_fails_frozen_nograd():
    results = run_group(spec_of(lambda: Net(linear_block(), AddsABias())), ["sgd/frozen_nograd"])
    assert failed_with(results["sgd/frozen_nograd"], "frozen_nograd: frozen block 1's output requires grad")


class ScalesItsInput(Net):
    """A trainable parameter before the frozen blocks (like a tied embedding): frozen_2 trains it
    through the frozen blocks, frozen_nograd cannot (no gradient crosses blocks run under no_grad)."""

    def __init__(self, *blocks):
        super().__init__(*blocks)
        self.scale = nn.Parameter(torch.ones(WIDTH))

    def forward_stages(self, x, start=0, stop=None):
        return super().forward_stages(x * self.scale if start == 0 else x, start, stop)


def test_a_frozen_nograd_that_trains_other_parameters_than_frozen_n_fails():
    results = run_group(
        spec_of(lambda: ScalesItsInput(linear_block(), linear_block())), ["sgd/frozen_nograd"]
    )
    assert failed_with(
        results["sgd/frozen_nograd"],
        "frozen_nograd and frozen_2 give gradients to different parameters: scale",
    )


class OtherFunctionWithoutGrad(nn.Module):
    """Computes something else when grad is off: frozen_nograd trains on other features."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        y = torch.relu(self.lin(x))
        return y if torch.is_grad_enabled() else y + 1


def test_a_frozen_nograd_that_computes_something_else_fails():
    results = run_group(spec_of(lambda: Net(OtherFunctionWithoutGrad())), ["sgd/frozen_nograd"])
    assert failed_with(results["sgd/frozen_nograd"], "frozen_nograd loss", "!= frozen_1 loss")


def test_check_after_steps_names_each_broken_promise():
    """The check on its own, against a zoo MLP step tampered with by hand."""
    start = template(ZOO["mlp"], 2)
    promised = promise(start, Strategy("frozen_1", 1))
    assert promised.frozen == {"trunk_blocks.0.0.weight", "trunk_blocks.0.0.bias"}
    assert len(promised.trainable) == MLP_TENSORS["frozen_1"] and promised.frozen_buffers == frozenset()
    step = TrainStep(start, Strategy("frozen_1", 1), "sgd", DEVICE)
    frozen = frozen_state(step.model, promised)
    step()
    trainable = trainable_state(step.model, promised)
    assert "6 trainable parameters did not change" in check_after_steps(
        step, promised, frozen, trainable
    )  # no step since the snapshot
    step()
    assert check_after_steps(step, promised, frozen, trainable) is None
    step.frozen[0].grad = torch.zeros_like(step.frozen[0])
    assert "1 frozen parameters have a .grad" in check_after_steps(step, promised, frozen, trainable)
    step.frozen[0].grad = None
    with torch.no_grad():
        step.frozen[0].add_(1.0)
    assert "1 frozen parameters changed" in check_after_steps(step, promised, frozen, trainable)


def test_categories_agree_with_torch_mem_tracker():
    """Cross-check against torch.distributed._tools.mem_tracker.MemTracker (a private torch API:
    skipped only where it does not exist; a change in it fails here, to be looked at)."""
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    # MemTracker hooks every parameter's gradient, so it cannot follow frozen ones: `full` only
    step, mine = step_for(Strategy("full", 0), "adamw")
    tracker = mem_tracker.MemTracker()
    tracker.track_external(step.model, step.optimizer)
    with tracker:
        step()
    peak, after = tracker.get_tracker_snapshot("peak"), tracker.get_tracker_snapshot()

    def by_kind(snapshot):
        (per_device,) = snapshot.values()
        return {getattr(k, "name", k): v for k, v in per_device.items()}

    assert mine["mem_params_bytes"] == (sum(MLP_BLOCKS) + MLP_HEAD) * F32  # by hand
    assert by_kind(after)["PARAM"] == mine["mem_params_bytes"]
    assert by_kind(after)["OPT"] == mine["mem_optimizer_state_bytes"]  # state left after the step
    assert by_kind(peak)["GRAD"] == mine["mem_grads_bytes"]  # gradients at the step's peak
