"""The `checkpoint` and `lora` fine-tuning strategies: memory by category against byte counts
worked out by hand, and each of their checks shown failing on a deliberately broken case."""

import contextlib

import pytest
import torch
from torch import nn

import bench_lib.suites.finetune.checkpointing as checkpointing
import bench_lib.suites.finetune.lora as lora
import bench_lib.suites.finetune.measure as ft
from bench_lib.measure.devices import CpuDevice
from bench_lib.models import ZOO, ModelInstance, ModelSpec, StagedModel, blocks_of
from bench_lib.records.cases import Profile
from bench_lib.suites.finetune.measure import (
    CHECKPOINT,
    LORA,
    Strategy,
    TrainStep,
    checkpoint_mismatch,
    measure_finetune_group,
    promise,
    strategies,
    strategy_names,
    template,
)

pytestmark = pytest.mark.skipif(not lora.available(), reason="needs peft (the lora extra)")

F32, I64 = 4, 8
DEVICE = CpuDevice()
TINY = Profile("t", (2,), rounds=3, warmup_rounds=1, finetune_rounds=3, iterations=1)
CHECKPOINTED = Strategy(CHECKPOINT, 0, checkpoint=True)
LORA_STRATEGY = Strategy(LORA, 0, lora=True)
R = lora.RANK


def loss_saved(b, classes):
    """cross_entropy: log_softmax saves its b x classes fp32 result, nll_loss the int64 target
    and a one-element fp32 total_weight."""
    return b * classes * F32 + b * I64 + F32


def step_for(spec, strategy, optimizer="sgd", batch_size=2):
    step = TrainStep(template(spec, batch_size), strategy, optimizer, DEVICE)
    step()  # the first step creates the optimizer state
    return step, step.measure_memory(DEVICE)


def failed_with(result, *fragments):
    assert result.status == "failed", f"expected a failure, got {result.status}"
    assert all(f in result.error for f in fragments), result.error
    assert result.samples is None  # never recorded as a good number
    return True


def test_the_new_strategies_are_offered_for_every_fine_tuned_zoo_model():
    assert [s.name for s in strategies(3)] == [
        "full", "frozen_1", "frozen_3", "frozen_nograd", "checkpoint", "frozen_1+checkpoint", "lora"
    ]  # fmt: skip
    assert [s.name for s in strategies(1)] == ["full", "frozen_1", "frozen_nograd", "checkpoint", "lora"]
    for model in ("mlp", "cnn", "transformer"):
        names = strategy_names(ZOO[model])
        assert names[-2:] == ["checkpoint", "lora"] and not any("+" in n for n in names)
        assert strategy_names(ZOO[model], checkpoint_frozen=True)[-2].endswith("+checkpoint")
    assert Strategy("frozen_2+checkpoint", 2, checkpoint=True).reference == Strategy("frozen_2", 2)


def test_checkpoint_and_lora_run_with_one_optimizer():
    """AdamW where the run has it (their ratios are to AdamW's full), else the run's optimizer."""
    from bench_lib.session import RunConfig

    cases = RunConfig.parse(profile="tiny", models="mlp", devices="cpu").cases_of("finetune")
    by_strategy = {s: {c.optimizer for c in cases if c.strategy == s} for s in {c.strategy for c in cases}}
    assert by_strategy["lora"] == by_strategy["checkpoint"] == {"adamw"}
    assert by_strategy["full"] == by_strategy["frozen_nograd"] == {"sgd", "adamw"}
    full = RunConfig.parse(profile="full", models="mlp", devices="cpu", optimizers="sgd").cases_of("finetune")
    assert {c.strategy for c in full} >= {"lora", "checkpoint", "frozen_1+checkpoint"}


# -- LoRA on the zoo MLP (256-512-512-512-10), counted by hand ---------------------------------

MLP_BASE = (256 * 512 + 512) + 2 * (512 * 512 + 512) + (512 * 10 + 10)
MLP_HEAD = 512 * 10 + 10
# per adapted Linear: A is r x in, B is out x r (rank 8)
MLP_ADAPTERS = R * (256 + 512) + 2 * R * (512 + 512)


def test_lora_targets_and_promise_of_the_zoo_models():
    mlp = template(ZOO["mlp"], 2)
    plan = lora.lora_plan(mlp)
    assert plan.targets == ("trunk_blocks.0.0", "trunk_blocks.1.0", "trunk_blocks.2.0")
    assert plan.rank == 8 and plan.recorded == "trunk_blocks.0.0|trunk_blocks.1.0|trunk_blocks.2.0"
    promised = promise(mlp, LORA_STRATEGY)
    assert promised.trainable == {
        "trunk_blocks.0.0.lora_A.default.weight", "trunk_blocks.0.0.lora_B.default.weight",
        "trunk_blocks.1.0.lora_A.default.weight", "trunk_blocks.1.0.lora_B.default.weight",
        "trunk_blocks.2.0.lora_A.default.weight", "trunk_blocks.2.0.lora_B.default.weight",
        "head.weight", "head.bias",
    }  # fmt: skip
    assert "trunk_blocks.0.0.base_layer.weight" in promised.frozen and len(promised.frozen) == 6
    # the transformer: the feed-forward Linears, not nn.MultiheadAttention's projections
    transformer = lora.lora_plan(template(ZOO["transformer"], 2))
    assert transformer.targets == tuple(f"encoder.layers.{i}.linear{j}" for i in (0, 1) for j in (1, 2))
    cnn = lora.lora_plan(template(ZOO["cnn"], 2))
    assert len(cnn.targets) == 9 and "trunk_blocks.2.shortcut.0" in cnn.targets  # every convolution


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_lora_memory_by_category_by_hand(optimizer):
    step, mem = step_for(ZOO["mlp"], LORA_STRATEGY, optimizer)
    trained = MLP_ADAPTERS + MLP_HEAD
    assert sum(p.numel() for p in step.trainable) == trained == 27_658
    assert mem["mem_params_bytes"] == (MLP_BASE + MLP_ADAPTERS) * F32
    assert mem["mem_grads_bytes"] == trained * F32
    tensors = 3 * 2 + 2  # A and B per adapted Linear, the head's weight and bias
    state = {"sgd": trained * F32, "adamw": 2 * trained * F32 + tensors * F32}  # + AdamW's `step`
    assert mem["mem_optimizer_state_bytes"] == state[optimizer]
    b = 2
    # the input x (saved by the first lora_A; the frozen base Linear saves nothing of its own),
    # each A's b x r output (saved by B), each block's ReLU output (saved by the ReLU, and by the
    # next lora_A or the head), the loss
    assert mem["mem_activations_bytes"] == (
        b * 256 * F32 + 3 * b * R * F32 + 3 * b * 512 * F32 + loss_saved(b, 10)
    )


def test_lora_keeps_the_names_of_everything_it_does_not_wrap_and_follows_the_blocks():
    """A block that is itself a Linear is replaced by peft's wrapper: the step's blocks follow."""
    spec = spec_of(lambda: Net(nn.Linear(WIDTH, WIDTH), linear_block()))
    step, _ = step_for(spec, LORA_STRATEGY)
    assert type(step.blocks[0]).__name__ == "Linear" and step.blocks[0] is step.model.trunk_blocks[0]
    assert step.blocks[0].base_layer.weight.requires_grad is False
    assert {n for n, p in step.model.named_parameters() if p.requires_grad} == {
        "trunk_blocks.0.lora_A.default.weight", "trunk_blocks.0.lora_B.default.weight",
        "trunk_blocks.1.0.lora_A.default.weight", "trunk_blocks.1.0.lora_B.default.weight",
        "head.weight", "head.bias",
    }  # fmt: skip


def test_a_model_may_name_its_lora_targets():
    def factory(b):
        instance = spec_of(lambda: Net(linear_block(), linear_block())).instantiate(b)
        instance.lora_targets = ("1.0",)
        return instance

    results = run_group(ModelSpec("named", factory=factory), ["sgd/lora"])
    assert results["sgd/lora"].ok, results["sgd/lora"].error
    assert results["sgd/lora"].metrics["lora_targets"] == "1.0"
    assert results["sgd/lora"].metrics["trainable_params"] == 2 * R * WIDTH + WIDTH * CLASSES + CLASSES
    instance = factory(2)
    instance.lora_targets = ("nowhere",)
    with pytest.raises(ValueError, match=r"lora_targets \['nowhere'\] match no module inside the blocks"):
        lora.lora_plan(instance)


def test_hugging_face_models_name_their_attention_projections():
    transformers = pytest.importorskip("transformers")  # peft depends on it
    from bench_lib.models.hf import bert_base

    plan = lora.lora_plan(bert_base(1))
    assert plan.recorded == "query|value" and len(plan.targets) == 24
    assert plan.targets[0] == "bert.encoder.layer.0.attention.self.query"
    assert transformers is not None


# -- activation checkpointing, counted by hand --------------------------------------------------

WIDTH, HIDDEN, CLASSES = 8, 32, 3


class Net(StagedModel):
    """A small staged model: the given trunk blocks, then a Linear head."""

    def __init__(self, *blocks):
        super().__init__()
        self.trunk_blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(WIDTH, CLASSES)


def linear_block():
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU())


def two_layer_block():
    return nn.Sequential(nn.Linear(WIDTH, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, WIDTH), nn.ReLU())


def spec_of(build, name="small"):
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


def run_group(spec, variants, batch_size=4):
    return measure_finetune_group(spec, DEVICE, batch_size, TINY, variants)


TWO_BLOCKS = spec_of(lambda: Net(two_layer_block(), two_layer_block()))


def test_checkpointed_activations_are_the_block_inputs_only():
    b, loss = 2, loss_saved(2, CLASSES)
    mem = {s.name: step_for(TWO_BLOCKS, s)[1] for s in strategies(2) if not s.lora}
    # full: per block, its input (first Linear), the b x HIDDEN ReLU output (ReLU and second
    # Linear) and the b x WIDTH ReLU output (which is the next block's or the head's input)
    assert mem["full"]["mem_activations_bytes"] == b * (3 * WIDTH + 2 * HIDDEN) * F32 + loss
    # checkpoint: each block's input (x and block 0's output), then the head's input
    assert mem["checkpoint"]["mem_activations_bytes"] == 3 * b * WIDTH * F32 + loss
    # frozen_1: block 1's input, its hidden ReLU output, its output (the head's input)
    assert mem["frozen_1"]["mem_activations_bytes"] == b * (2 * WIDTH + HIDDEN) * F32 + loss
    # frozen_1+checkpoint: block 1's input (kept by the checkpoint), the head's input
    assert mem["frozen_1+checkpoint"]["mem_activations_bytes"] == 2 * b * WIDTH * F32 + loss
    params = 2 * (WIDTH * HIDDEN + HIDDEN + HIDDEN * WIDTH + WIDTH) + WIDTH * CLASSES + CLASSES
    for name in ("full", "checkpoint"):  # checkpointing trains everything: same grads and state
        assert mem[name]["mem_params_bytes"] == mem[name]["mem_grads_bytes"] == params * F32
        assert mem[name]["mem_optimizer_state_bytes"] == params * F32  # SGD momentum
    assert mem["frozen_1+checkpoint"]["mem_grads_bytes"] == mem["frozen_1"]["mem_grads_bytes"]


def test_checkpointing_recomputes_in_backward_and_computes_what_full_computes():
    instance = template(ZOO["transformer"], 2)  # dropout 0.1 in train(): the RNG state is replayed
    assert checkpoint_mismatch(instance, DEVICE, CHECKPOINTED) is None
    step = TrainStep(template(TWO_BLOCKS, 2), CHECKPOINTED, "sgd", DEVICE)
    calls = []
    step.blocks[0][0].register_forward_hook(lambda *args: calls.append(torch.is_grad_enabled()))
    step()
    assert calls == [True, True]  # the forward, then its recomputation in backward


def test_zoo_groups_with_the_new_strategies_pass_every_check():
    for model in ("mlp", "cnn", "transformer"):
        results = run_group(ZOO[model], ["adamw/checkpoint", "sgd/lora"], batch_size=2)
        assert all(r.ok for r in results.values()), {v: r.error for v, r in results.items()}
        full, ck = results["adamw/full"].metrics, results["adamw/checkpoint"].metrics
        assert ck["mem_activations_bytes"] <= full["mem_activations_bytes"]
        assert ck["mem_grads_bytes"] == full["mem_grads_bytes"]
        lo = results["sgd/lora"].metrics
        assert lo["lora_rank"] == 8 and lo["lora_targets"]
        assert lo["trainable_params"] < results["sgd/full"].metrics["trainable_params"]
    assert "lora_rank" not in results["adamw/checkpoint"].metrics


# -- each promise shown failing on a deliberately broken case ------------------------------------


def test_blocks_that_are_not_checkpointed_fail(monkeypatch):
    monkeypatch.setattr(checkpointing, "checkpoint_blocks", lambda blocks: None)
    results = run_group(TWO_BLOCKS, ["sgd/checkpoint"])
    assert failed_with(
        results["sgd/checkpoint"],
        "checkpoint: autograd saved 4 tensors (1280 bytes) inside the checkpointed blocks besides "
        "their inputs: they are not checkpointed",
    )  # per block its two ReLU outputs: 4 x 32 and 4 x 8 floats
    assert results["sgd/full"].ok


class SavesAPlaceholder(torch.autograd.Function):
    """What torch 2.11's non-reentrant checkpoint does before each checkpointed call
    (`_NoopSaveInputs`): saves an empty tensor through the caller's saved-tensor hooks."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(torch.empty((0,)))
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def test_an_empty_placeholder_saved_around_the_checkpoint_is_no_activation(monkeypatch):
    """Every checkpoint case failed on torch 2.11 (the GPU machine's) for three 0-byte tensors;
    the check still fails blocks that are not checkpointed (above)."""
    real = checkpointing.checkpoint

    def like_torch_2_11(forward, *args, **kwargs):
        return real(forward, *(SavesAPlaceholder.apply(a) for a in args), **kwargs)

    monkeypatch.setattr(checkpointing, "checkpoint", like_torch_2_11)
    results = run_group(TWO_BLOCKS, ["sgd/checkpoint"])
    assert results["sgd/checkpoint"].ok, results["sgd/checkpoint"].error


class CountsItsCalls(nn.Module):
    """Computes something else each time it runs: its recomputation in backward differs."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.relu(self.lin(x * self.calls))  # the Linear saves its input: x, then 2x


def test_a_block_whose_recomputation_differs_fails_checkpoint():
    results = run_group(spec_of(lambda: Net(CountsItsCalls(), linear_block())), ["sgd/checkpoint"])
    assert failed_with(results["sgd/checkpoint"], "gradients differ from full's: trunk_blocks.0.lin.")


def bn_block():
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.BatchNorm1d(WIDTH), nn.ReLU())


def test_batch_norm_statistics_updated_again_by_the_recomputation_fail(monkeypatch):
    """A plain checkpoint runs BatchNorm's forward twice per step in train(): its running
    statistics move twice. The suite restores them after the recomputation; without that the
    check fails."""
    spec = spec_of(lambda: Net(bn_block(), bn_block()))
    assert run_group(spec, ["sgd/checkpoint"])["sgd/checkpoint"].ok
    plain = lambda module: lambda: (contextlib.nullcontext(), contextlib.nullcontext())  # noqa: E731
    monkeypatch.setattr(checkpointing, "recompute_context", plain)
    results = run_group(spec, ["sgd/checkpoint"])
    assert failed_with(
        results["sgd/checkpoint"],
        "checkpoint: 6 buffers differ from full's after one forward and backward (the recomputed "
        "forward updated them again): trunk_blocks.0.1.num_batches_tracked",
    )


class AddsABias(nn.Module):
    """Saves nothing for backward itself (an addition): checkpointing it keeps its input."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(WIDTH))

    def forward(self, x):
        return x + self.bias


def test_checkpointing_that_keeps_more_activations_than_full_fails():
    results = run_group(spec_of(lambda: Net(AddsABias(), linear_block())), ["sgd/checkpoint"])
    assert failed_with(
        results["sgd/checkpoint"], "checkpoint keeps more activations than full (", " > "
    )  # checkpointed: x kept for block 0; plain: nothing


def test_lora_adapters_that_do_not_start_at_zero_fail(monkeypatch):
    monkeypatch.setitem(lora.OPTIONS, "init_lora_weights", False)  # B random: not a no-op at step 0
    results = run_group(ZOO["mlp"], ["sgd/lora"], batch_size=2)
    assert failed_with(
        results["sgd/lora"], "lora: the output before the first step differs from the base model's"
    )


def test_lora_on_multihead_attention_out_proj_gets_no_gradient():
    """nn.MultiheadAttention reads out_proj's weight directly: an adapter on it is bypassed."""
    results = run_group(transformer_with_targets("self_attn.out_proj"), ["sgd/lora"], batch_size=2)
    assert failed_with(
        results["sgd/lora"],
        "lora: 4 trainable parameters receive no gradient: encoder.layers.0.self_attn.out_proj.lora_A.default.weight",
    )


def test_lora_on_multihead_attention_changes_the_frozen_weights():
    """peft's MultiheadAttention wrapper merges the adapter into the weights for each forward
    and subtracts it after: the frozen weights do not come back bit for bit."""
    results = run_group(transformer_with_targets("self_attn"), ["sgd/lora"], batch_size=2)
    assert failed_with(
        results["sgd/lora"],
        "lora: 4 frozen parameters changed: encoder.layers.0.self_attn.base_layer.in_proj_weight",
    )


def transformer_with_targets(*targets):
    def factory(batch_size):
        instance = ZOO["transformer"].instantiate(batch_size)
        instance.lora_targets = targets
        return instance

    return ModelSpec("transformer", factory=factory)


class ShrinksItsWeights(nn.Module):
    """Changes its own weight in forward (a hand-made weight decay), frozen or not."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        with torch.no_grad():
            self.lin.weight.mul_(0.99)
        return torch.relu(self.lin(x))


def test_lora_base_weights_that_change_fail():
    results = run_group(spec_of(lambda: Net(ShrinksItsWeights(), linear_block())), ["sgd/lora"])
    assert failed_with(
        results["sgd/lora"], "lora: 1 frozen parameters changed: trunk_blocks.0.lin.base_layer.weight"
    )


def test_lora_adapters_the_optimizer_skips_fail(monkeypatch):
    head_only = lambda params: torch.optim.SGD(params[-2:], lr=0.01, momentum=0.9)  # noqa: E731
    monkeypatch.setitem(ft.OPTIMIZERS, "sgd", head_only)
    results = run_group(ZOO["mlp"], ["sgd/lora"], batch_size=2)
    # the B matrices: the A matrices get no gradient while B stays at zero, so they may stay put
    assert failed_with(
        results["sgd/lora"],
        "lora: 3 trainable parameters did not change over the measured steps although their "
        "gradients are large enough to move them: trunk_blocks.0.0.lora_B.default.weight",
    )


def test_lora_adapters_that_are_missing_fail(monkeypatch):
    """peft wraps the layers it adapts (names change): a promise it did not keep is named."""
    monkeypatch.setattr(lora, "apply_lora", lambda model, plan: model)  # no adapters at all
    results = run_group(ZOO["mlp"], ["sgd/lora"], batch_size=2)
    assert failed_with(
        results["sgd/lora"], "lora: 12 parameters it promises do not exist: trunk_blocks.0.0.base_layer.bias"
    )


def test_the_report_shows_the_strategies_side_by_side():
    """The fine-tuning table (console, Markdown, HTML) and the stacked memory plot per category."""
    import pandas as pd

    from bench_lib.analysis import plots
    from bench_lib.analysis.report import finetune_view
    from bench_lib.suites import SUITES

    results = run_group(ZOO["mlp"], ["adamw/checkpoint", "adamw/lora"], batch_size=2)
    results = SUITES["finetune"].add_ratios({r.case: r for r in results.values()})
    frame = pd.DataFrame([r.row() for r in results.values()]).assign(run_id="r")
    view = finetune_view(frame)
    strategies_shown = list(view.index.get_level_values("strategy"))
    assert strategies_shown == ["full", "checkpoint", "lora"]
    lora_row = view.xs("lora", level="strategy").iloc[0]
    assert (
        lora_row["grads (MiB)"] == f"{27_658 * 4 / 2**20:.2f}" and lora_row["step / full"] != "-"
    )  # 27,658 fp32 gradients
    assert (
        len(plots.finetune_ratios(frame)) == 1
    )  # one figure: the strategies' ratios beside their stacked memory
