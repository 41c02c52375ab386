"""The fine-tuning suite: training steps with frozen blocks, and their memory by category.

Strategies for a model with n trunk blocks (the head is always trained):
- `full`: every parameter trainable;
- `frozen_<k>`: the first k blocks frozen with `requires_grad_(False)`; the suite runs a partial
  depth k = n // 2 and k = n ("all but the head", i.e. head-only training);
- `frozen_nograd`: the same n frozen blocks, run under `torch.no_grad()` as a feature extractor,
  only the head in autograd. It trains the same parameters as `frozen_<n>`: head-only training
  done the other way, so the two are compared rather than a separate `head_only` case;
- `checkpoint`: `full` with each trunk block under activation checkpointing
  (`torch.utils.checkpoint`, non-reentrant; `bench_lib.suites.finetune.checkpointing`): the same
  training, activations kept at the block inputs only, the blocks' forwards run again in backward;
  `frozen_<k>+checkpoint` (profile `full`): `frozen_<k>` with the remaining blocks checkpointed;
- `lora`: LoRA adapters (peft, rank 8) on the blocks' layers, the base frozen, adapters and head
  trained (`bench_lib.suites.finetune.lora`; needs peft, the `lora` extra).

Frozen means frozen: frozen blocks run in `eval()` (the common practice), so BatchNorm running
statistics and dropout are frozen with the weights; the rest of the model trains in `train()`
(under `lora` all of it: its blocks are adapted, not frozen).
The checks (`check_after_steps`, `nograd_trunk_violation`, `nograd_mismatch`,
`checkpoint_violation`, `checkpoint_mismatch`, `lora_output_mismatch`) test each promise against
what the strategy says, worked out apart from the `TrainStep` that applies it.
"""

from __future__ import annotations

import copy
import gc
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import cache

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from bench_lib.measure.devices import Device
from bench_lib.measure.memory import SavedTensorCounter, storage_bytes
from bench_lib.measure.memory_trace import (
    AUTOGRAD,
    LOSS,
    OPTIMIZER,
    MemoryTrace,
    ModuleMemory,
    device_counters,
)
from bench_lib.measure.precision import FLOAT32, autocast, grad_scaler
from bench_lib.measure.telemetry import energy_columns
from bench_lib.measure.timing import Variant, calibrate_iterations, measure_interleaved
from bench_lib.models import ModelInstance, ModelSpec, StagedModel
from bench_lib.records.cases import FINETUNE, Case, Profile
from bench_lib.records.results import FAILED, CaseResult, failure
from bench_lib.suites.finetune import CHECKPOINT, FULL, LORA, checkpointing, lora

SEED = 0
NOGRAD = "frozen_nograd"

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3),
}


@dataclass(frozen=True)
class Strategy:
    """A fine-tuning strategy: the first `frozen_blocks` blocks frozen (in `eval()`), run under
    no_grad (`nograd`), the other blocks checkpointed (`checkpoint`), or LoRA adapters on a
    frozen base (`lora`)."""

    name: str
    frozen_blocks: int
    nograd: bool = False
    checkpoint: bool = False
    lora: bool = False

    @property
    def reference(self) -> Strategy:
        """What a checkpointed strategy must compute the same as: itself without checkpointing."""
        return Strategy(f"frozen_{self.frozen_blocks}" if self.frozen_blocks else FULL, self.frozen_blocks)


def strategies(n_blocks: int) -> list[Strategy]:
    """The strategies for a model with `n_blocks` trunk blocks (see the module docstring)."""
    partial = max(1, n_blocks // 2)
    out = [Strategy(FULL, 0), Strategy(f"frozen_{partial}", partial)]
    if n_blocks != partial:
        out.append(Strategy(f"frozen_{n_blocks}", n_blocks))
    out.append(Strategy(NOGRAD, n_blocks, nograd=True))
    out.append(Strategy(CHECKPOINT, 0, checkpoint=True))
    if n_blocks != partial:
        out.append(Strategy(f"frozen_{partial}+{CHECKPOINT}", partial, checkpoint=True))
    out.append(Strategy(LORA, 0, lora=True))
    return out


@cache
def strategy_names(spec: ModelSpec, checkpoint_frozen: bool = False) -> list[str]:
    """The strategy names of a model ([] when it cannot be fine-tuned: no blocks, loss or target).
    `lora` where peft is installed and the blocks hold a layer to adapt; `frozen_<k>+checkpoint`
    with `checkpoint_frozen` (the profile's)."""
    torch.manual_seed(SEED)
    instance = spec.instantiate(1)
    if not instance.trainable:
        return []
    names = []
    for s in strategies(len(instance.blocks)):
        if s.lora and not (lora.available() and lora.lora_plan(instance) is not None):
            continue
        if s.checkpoint and s.frozen_blocks and not checkpoint_frozen:
            continue
        names.append(s.name)
    return names


def template(spec: ModelSpec, batch_size: int) -> ModelInstance:
    """The model and batch every variant of a group starts from (each gets a deep copy: one
    random initialisation per group, however many variants)."""
    torch.manual_seed(SEED)
    instance = spec.instantiate(batch_size)
    if not instance.trainable:
        raise ValueError(f"model {spec.name!r} has no blocks, loss and target for fine-tuning")
    return instance


class _NoGradBlocks:
    """Runs the given blocks' forwards under `torch.no_grad()` (forward hooks), for models that
    are not `StagedModel`s: the frozen prefix becomes a feature extractor without a graph."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        self._previous: list[bool] = []
        for block in blocks:
            block.register_forward_pre_hook(self._enter)
            block.register_forward_hook(self._exit)

    def _enter(self, module: nn.Module, args: object) -> None:
        self._previous.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def _exit(self, module: nn.Module, args: object, output: object) -> None:
        torch.set_grad_enabled(self._previous.pop())


class TrainStep:
    """One model, optimizer and batch; calling it runs one training step.

    A step is forward, loss, backward, optimizer step, `zero_grad(set_to_none=True)`. The model
    is in `train()` mode except the frozen blocks, which are in `eval()` (BatchNorm statistics
    and dropout frozen too); the optimizer is built over the trainable parameters only. The
    instance is used as is (pass a copy to keep the original).
    """

    def __init__(
        self,
        instance: ModelInstance,
        strategy: Strategy,
        optimizer: str,
        device: Device,
        dtype: str = FLOAT32,
    ) -> None:
        if not instance.trainable or instance.target is None or instance.loss is None:
            raise ValueError("the model has no blocks, loss and target for fine-tuning")
        self.strategy = strategy
        self.lora_plan = _apply_lora(instance) if strategy.lora else None
        self.model = instance.model.to(device.name).train()
        self.blocks = list(instance.blocks)
        self.frozen_modules = self.blocks[: strategy.frozen_blocks]
        for block in self.frozen_modules:
            block.requires_grad_(False).eval()
        self.checkpointed = self.blocks[strategy.frozen_blocks :] if strategy.checkpoint else []
        checkpointing.checkpoint_blocks(self.checkpointed)
        self._staged = isinstance(self.model, StagedModel)
        if strategy.nograd and not self._staged:
            _NoGradBlocks(self.frozen_modules)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.frozen = [p for p in self.model.parameters() if not p.requires_grad]
        self.optimizer = OPTIMIZERS[optimizer](self.trainable)
        self.inputs = tuple(t.to(device.name) for t in instance.input_tuple())
        self.target = instance.target.to(device.name)
        self.loss_fn = instance.loss
        self.autocast = autocast(device.kind, dtype)
        self.scaler = grad_scaler(device.kind, dtype)

    def forward_loss(self) -> torch.Tensor:
        model, k = self.model, self.strategy.frozen_blocks
        with self.autocast():
            if self.strategy.nograd and self._staged:
                assert isinstance(model, StagedModel)
                with torch.no_grad():
                    features = model.forward_stages(self.inputs[0], stop=k)  # staged models take one input
                output = model.forward_stages(features, start=k)
            else:
                output = model(*self.inputs)
            return self.loss_fn(output, self.target)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimizer_step(self) -> None:
        if self.scaler is not None:  # float16: skips the step when gradients overflowed
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> torch.Tensor:
        loss = self.forward_loss()
        self.backward(loss)
        self.optimizer_step()
        return loss

    def optimizer_state_bytes(self) -> int:
        return storage_bytes(
            t
            for state in self.optimizer.state.values()
            for t in state.values()
            if isinstance(t, torch.Tensor)
        )

    def measure_memory(self, device: Device) -> dict[str, int]:
        """Memory by category of one step, in bytes (see `memory_profile`)."""
        return self.memory_profile(device)[0]

    def memory_profile(self, device: Device) -> tuple[dict[str, int], tuple[ModuleMemory, ...]]:
        """Memory by category of one step, in bytes, and where its peak and its activations
        went, by module (run it after a first step, so the optimizer state exists: the figures
        are those of a steady-state step).

        - `mem_params_bytes`: all parameters, trainable or frozen;
        - `mem_grads_bytes`: the `.grad` tensors right after backward;
        - `mem_optimizer_state_bytes`: every tensor in the optimizer's state after the step
          (AdamW: exp_avg, exp_avg_sq and a one-element `step` per parameter; SGD: momentum);
        - `mem_activations_bytes`: bytes autograd saved for backward in the forward (parameters
          excluded), all alive together at the end of the forward;
        - `mem_peak_bytes`: the allocator's high-water mark during the whole step beyond what was
          live before it (activations, gradients, temporaries, scratch inside kernels), traced
          by `MemoryTrace`; the module rows split it and the activations by module, the loss
          and the optimizer step.
        """
        trace = MemoryTrace(device.name, self.model, self.blocks, default_label=LOSS)
        saved = SavedTensorCounter(self.model.parameters(), label=trace.current_label)
        counter = device_counters(device)
        with counter.track() if counter else nullcontext(), trace.track():
            with saved.track():
                loss = self.forward_loss()
            with trace.phase(AUTOGRAD):
                self.backward(loss)
            grads = storage_bytes(p.grad for p in self.model.parameters() if p.grad is not None)
            with trace.phase(OPTIMIZER):
                self.optimizer_step()
            del loss
        device.synchronize()
        metrics = {
            "mem_params_bytes": storage_bytes(self.model.parameters()),
            "mem_grads_bytes": grads,
            "mem_optimizer_state_bytes": self.optimizer_state_bytes(),
            "mem_activations_bytes": saved.saved_bytes,
            "mem_peak_bytes": trace.peak_bytes,
            **getattr(counter, "extra", {}),  # CUDA: the allocator's own counters
        }
        return metrics, trace.modules(saved.by_label)


def _apply_lora(instance: ModelInstance) -> lora.LoraPlan:
    """Put LoRA adapters into `instance`'s model (in place; `instance.blocks` follows the
    modules peft replaced) and unfreeze the parameters outside the blocks that required grad
    (peft freezes all but the adapters; the head trains in full). The adapters' random
    initialisation (A; B is zero) draws from a fixed seed."""
    plan = lora.lora_plan(instance)
    if plan is None:
        raise ValueError("lora: the blocks hold no layer to adapt (Linear or Conv, or lora_targets)")
    model = instance.model
    paths = {id(m): name for name, m in model.named_modules()}
    block_paths = [paths[id(b)] for b in instance.blocks]
    in_blocks = {id(p) for block in instance.blocks for p in block.parameters()}
    outside = [p for p in model.parameters() if p.requires_grad and id(p) not in in_blocks]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + 1)
        lora.apply_lora(model, plan)
    for p in outside:
        p.requires_grad_(True)
    instance.blocks = [model.get_submodule(path) for path in block_paths]
    return plan


def measure_variant_memory(
    start: ModelInstance, strategy: Strategy, optimizer: str, device: Device, dtype: str = FLOAT32
) -> tuple[dict[str, int], tuple[ModuleMemory, ...]]:
    """The memory of one variant measured with only its own memory live: its own copy of the
    model, one step to create the optimizer state, one profiled step; then its model,
    gradients and optimizer state are freed (and the device's cache emptied) before it returns,
    so that the next variant's figures do not depend on this one."""
    step = TrainStep(copy.deepcopy(start), strategy, optimizer, device, dtype)
    try:
        step()  # first step: optimizer state comes into being
        metrics, modules = step.memory_profile(device)
    finally:
        del step
        gc.collect()  # autograd nodes and hooks may hold references in cycles
        device.release_memory()
    return metrics, modules


@dataclass(frozen=True)
class Promise:
    """What a strategy promises for one model, by parameter and buffer name: which parameters
    it trains, which it leaves alone (frozen), and which buffers belong to frozen blocks (they
    stay put too: frozen blocks run in `eval()`). Worked out from the untouched model, not from
    the `TrainStep` that applies the strategy, so the checks do not take its word for it."""

    trainable: frozenset[str]
    frozen: frozenset[str]
    frozen_buffers: frozenset[str]


def promise(instance: ModelInstance, strategy: Strategy) -> Promise:
    """The promise of `strategy` for `instance` (pass the instance before a `TrainStep` has
    touched it): the first `strategy.frozen_blocks` blocks frozen, every other parameter that
    requires grad trained. `lora`: every parameter inside the blocks frozen (by the name it has
    once peft wrapped its layer), the adapters of the plan's targets and every parameter outside
    the blocks that requires grad trained; no buffer promised (the blocks run in `train()`)."""
    if strategy.lora:
        return _lora_promise(instance)
    frozen_blocks = list(instance.blocks)[: strategy.frozen_blocks]
    in_frozen = {id(t) for block in frozen_blocks for t in (*block.parameters(), *block.buffers())}
    params = dict(instance.model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad and id(p) not in in_frozen}
    return Promise(
        trainable=frozenset(trainable),
        frozen=frozenset(params) - trainable,
        frozen_buffers=frozenset(n for n, b in instance.model.named_buffers() if id(b) in in_frozen),
    )


def _lora_promise(instance: ModelInstance) -> Promise:
    plan = lora.lora_plan(instance)
    if plan is None:
        raise ValueError("lora: the blocks hold no layer to adapt (Linear or Conv, or lora_targets)")
    in_blocks = {id(p) for block in instance.blocks for p in block.parameters()}
    params = dict(instance.model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad and id(p) not in in_blocks}
    trainable |= set(plan.adapter_parameters(instance.model))
    frozen = {lora.base_name(n, plan) for n in params} - trainable
    return Promise(frozenset(trainable), frozenset(frozen), frozenset())


def frozen_state(model: nn.Module, promised: Promise) -> dict[str, torch.Tensor]:
    """Copies of the parameters and buffers `promised` frozen (take them before the first step;
    a promised name the model lacks is left out here and named by `check_after_steps`)."""
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    names = sorted(promised.frozen | promised.frozen_buffers)
    return {n: tensors[n].detach().clone() for n in names if n in tensors}


def trainable_state(model: nn.Module, promised: Promise) -> dict[str, torch.Tensor]:
    """Copies of the parameters `promised` trainable (take them before the measured steps)."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in sorted(promised.trainable) if n in params}


def _names(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def check_after_steps(
    step: TrainStep,
    promised: Promise,
    frozen_before: dict[str, torch.Tensor],
    trainable_before: dict[str, torch.Tensor],
) -> str | None:
    """Why the measured steps broke the strategy's promises, or None.

    In order: exactly the promised parameters require grad (a `full` step that silently froze
    the trunk fails here); the frozen parameters and the buffers of frozen blocks (BatchNorm
    statistics) are bitwise what they were before the first step, and no frozen parameter has a
    `.grad`; then one more forward and backward (no optimizer step): the loss is finite, every
    trainable parameter receives a gradient, and every one whose gradient is large enough that
    one plain SGD step at the optimizer's learning rate would change it (in its own precision)
    changed over the measured steps. A parameter whose gradient is zero, or zero up to rounding
    (a bias before BatchNorm in `train()`), may legitimately stay put. The gradients are
    cleared afterwards.
    """
    name = step.strategy.name
    params = dict(step.model.named_parameters())
    requires_grad = {n for n, p in params.items() if p.requires_grad}
    if absent := sorted((promised.trainable | promised.frozen) - set(params)):
        return f"{name}: {len(absent)} parameters it promises do not exist: {_names(absent)}"
    if missing := sorted(promised.trainable - requires_grad):
        return f"{name}: {len(missing)} parameters it should train do not require grad: {_names(missing)}"
    if extra := sorted(requires_grad - promised.trainable):
        return f"{name}: {len(extra)} parameters it should freeze require grad: {_names(extra)}"
    tensors = params | dict(step.model.named_buffers())
    if with_grad := [n for n in frozen_before if n in params and params[n].grad is not None]:
        return f"{name}: {len(with_grad)} frozen parameters have a .grad: {_names(with_grad)}"
    changed = [n for n, before in frozen_before.items() if not torch.equal(tensors[n].detach(), before)]
    if changed_params := [n for n in changed if n in params]:
        return f"{name}: {len(changed_params)} frozen parameters changed: {_names(changed_params)}"
    if changed:
        return f"{name}: {len(changed)} buffers of frozen blocks changed (frozen blocks run in eval()): {_names(changed)}"

    loss = step.forward_loss()
    if not math.isfinite(loss.item()):
        return f"loss is {loss.item()} after the measured steps"
    step.backward(loss)
    lr = step.optimizer.defaults["lr"] / (step.scaler.get_scale() if step.scaler is not None else 1.0)

    def should_have_moved(p: torch.Tensor) -> bool:
        assert p.grad is not None
        return not torch.equal(p.detach() - lr * p.grad.detach(), p.detach())

    try:
        trainable = sorted(promised.trainable)
        no_gradient = [n for n in trainable if params[n].grad is None]
        unmoved = [
            n
            for n in trainable
            if params[n].grad is not None
            and should_have_moved(params[n])
            and torch.equal(params[n].detach(), trainable_before[n])
        ]
    finally:
        for p in params.values():
            p.grad = None
    if no_gradient:
        return f"{name}: {len(no_gradient)} trainable parameters receive no gradient: {_names(no_gradient)}"
    if unmoved:
        return (
            f"{name}: {len(unmoved)} trainable parameters did not change over the measured steps "
            f"although their gradients are large enough to move them: {_names(unmoved)}"
        )
    return None


def _tensors(output: object) -> list[torch.Tensor]:
    return [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]


def nograd_trunk_violation(
    instance: ModelInstance, device: Device, optimizer: str, n_blocks: int, dtype: str = FLOAT32
) -> str | None:
    """Whether `frozen_nograd` really runs its frozen blocks with autograd off.

    On a fresh copy, the frozen parameters are made to require grad for one forward, so that a
    trunk run with autograd on would record a graph whatever the inputs (a frozen prefix fed
    inputs that need no grad records nothing either way, so comparing with `frozen_<n>` cannot
    tell). Under no_grad nothing may be saved for backward inside a frozen block and no frozen
    block's output may require grad.
    """
    step = TrainStep(
        copy.deepcopy(instance), Strategy(NOGRAD, n_blocks, nograd=True), optimizer, device, dtype
    )
    for p in step.frozen:
        p.requires_grad_(True)
    depth, saved, needs_grad = 0, [], []

    def enter(module: nn.Module, args: object) -> None:
        nonlocal depth
        depth += 1

    def leave(module: nn.Module, args: object, output: object) -> None:
        nonlocal depth
        depth -= 1
        if any(t.requires_grad for t in _tensors(output)):
            needs_grad.append(module)

    def pack(t: torch.Tensor) -> torch.Tensor:
        if depth:
            saved.append(t.numel() * t.element_size())
        return t.detach()  # not `t`: a saved output that holds itself is a cycle through the graph (a leak)

    handles = [
        handle
        for block in step.frozen_modules
        for handle in (block.register_forward_pre_hook(enter), block.register_forward_hook(leave))
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step.forward_loss()
    finally:
        for handle in handles:
            handle.remove()
    if saved:
        return (
            f"frozen_nograd: autograd saved {len(saved)} tensors ({sum(saved)} bytes) inside the "
            "frozen blocks: they do not run under no_grad"
        )
    if needs_grad:
        index = next(i for i, block in enumerate(step.frozen_modules) if block is needs_grad[0])
        return f"frozen_nograd: frozen block {index}'s output requires grad: it does not run under no_grad"
    return None


def nograd_mismatch(
    instance: ModelInstance, device: Device, optimizer: str, n_blocks: int, dtype: str = FLOAT32
) -> str | None:
    """Whether `frozen_nograd` computes the same loss and gradients (of the trainable
    parameters, the same set) as `frozen_<n>` for the same input and weights (same seed, so
    dropout draws the same masks)."""
    grads: list[dict[str, torch.Tensor]] = []
    losses = []
    for strategy in (Strategy(f"frozen_{n_blocks}", n_blocks), Strategy(NOGRAD, n_blocks, nograd=True)):
        step = TrainStep(copy.deepcopy(instance), strategy, optimizer, device, dtype)
        torch.manual_seed(SEED + 2)
        loss = step.forward_loss()
        step.backward(loss)
        losses.append(loss.detach())
        grads.append(
            {n: p.grad.detach().clone() for n, p in step.model.named_parameters() if p.grad is not None}
        )
    rtol, atol = _tolerances(dtype)
    if not torch.allclose(losses[0], losses[1], rtol=rtol, atol=atol):
        return f"frozen_nograd loss {losses[1].item():.6g} != frozen_{n_blocks} loss {losses[0].item():.6g}"
    if differ := sorted(set(grads[0]) ^ set(grads[1])):
        return f"frozen_nograd and frozen_{n_blocks} give gradients to different parameters: {_names(differ)}"
    for n, a in grads[0].items():
        if not torch.allclose(a, grads[1][n], rtol=max(rtol, 1e-4), atol=atol):
            return f"frozen_nograd head gradients differ from frozen_{n_blocks}'s ({n})"
    return None


def _storage_key(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # storage-less tensors: never an input's storage
        return -id(t)


def _tolerances(dtype: str) -> tuple[float, float]:
    return (1e-5, 1e-6) if dtype == FLOAT32 else (2e-2, 2e-2)


def lora_output_mismatch(instance: ModelInstance, device: Device, dtype: str = FLOAT32) -> str | None:
    """Whether the model with its LoRA adapters, before any step, computes what the untouched
    model computes (LoRA's B starts at zero, so the adapters add exactly nothing): one forward
    of each, both in `train()`, under no_grad, from the same seed (dropout draws the same
    masks), on fresh copies."""
    outputs = []
    for strategy in (Strategy(FULL, 0), Strategy(LORA, 0, lora=True)):
        step = TrainStep(copy.deepcopy(instance), strategy, "sgd", device, dtype)
        torch.manual_seed(SEED + 2)
        with torch.no_grad(), step.autocast():
            outputs.append(_tensors(step.model(*step.inputs)))
        del step
    base, adapted = outputs
    rtol, atol = _tolerances(dtype)
    if len(base) != len(adapted) or not all(
        a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol)
        for a, b in zip(base, adapted, strict=False)
    ):
        worst = max(
            (
                (a.float() - b.float()).abs().max().item()
                for a, b in zip(base, adapted, strict=False)
                if a.shape == b.shape
            ),
            default=math.inf,
        )
        return (
            f"lora: the output before the first step differs from the base model's (max difference "
            f"{worst:.3g}): the adapters are not a no-op at initialisation (LoRA's B must start at zero)"
        )
    return None


def checkpoint_violation(
    instance: ModelInstance, device: Device, strategy: Strategy, dtype: str = FLOAT32
) -> str | None:
    """Whether the checkpointed blocks really keep their inputs only: in one forward, autograd
    may save nothing inside a checkpointed block but the block's own inputs (what the checkpoint
    keeps to run it again); a block run plainly saves its activations there. Storages of no
    bytes keep nothing and are not counted: torch 2.11's checkpoint saves an empty placeholder
    tensor per checkpointed call (`_NoopSaveInputs`), through the hooks of the caller."""
    step = TrainStep(copy.deepcopy(instance), strategy, "sgd", device, dtype)
    params = {_storage_key(p) for p in step.model.parameters()}  # saving a weight costs nothing
    inputs: list[set[int]] = []
    saved: dict[int, int] = {}  # storage -> bytes

    def enter(module: nn.Module, args: object, kwargs: object) -> None:
        inputs.append({_storage_key(t) for t in _tensors((args, kwargs))})

    def leave(module: nn.Module, args: object, kwargs: object, output: object) -> None:
        inputs.pop()

    def pack(t: torch.Tensor) -> torch.Tensor:
        if inputs and (key := _storage_key(t)) not in inputs[-1] | params:
            if nbytes := t.untyped_storage().nbytes():
                saved[key] = nbytes
        return t.detach()  # not `t`: a cycle through the graph (a leak)

    handles = [
        handle
        for block in step.checkpointed
        for handle in (
            block.register_forward_pre_hook(enter, with_kwargs=True),
            block.register_forward_hook(leave, with_kwargs=True, always_call=True),
        )
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step.forward_loss()
    finally:
        for handle in handles:
            handle.remove()
    if saved:
        return (
            f"{strategy.name}: autograd saved {len(saved)} tensors ({sum(saved.values())} bytes) inside "
            "the checkpointed blocks besides their inputs: they are not checkpointed"
        )
    return None


def checkpoint_mismatch(
    instance: ModelInstance, device: Device, strategy: Strategy, dtype: str = FLOAT32
) -> str | None:
    """Whether a checkpointed strategy computes what the same strategy without checkpointing
    (`full`, `frozen_<k>`) computes for the same input and weights (same seed: dropout draws the
    same masks): the same loss, gradients for the same parameters, equal within fp tolerance,
    and, after the forward and backward, the same buffers (bitwise: BatchNorm's running
    statistics, which a recomputed forward would update a second time)."""
    reference = strategy.reference
    losses, grads, buffers = [], [], []
    for s in (reference, strategy):
        step = TrainStep(copy.deepcopy(instance), s, "sgd", device, dtype)
        torch.manual_seed(SEED + 2)
        loss = step.forward_loss()
        step.backward(loss)
        losses.append(loss.detach())
        grads.append(
            {n: p.grad.detach().clone() for n, p in step.model.named_parameters() if p.grad is not None}
        )
        buffers.append({n: b.detach().clone() for n, b in step.model.named_buffers()})
        del step, loss
    rtol, atol = _tolerances(dtype)
    name, ref = strategy.name, reference.name
    if not torch.allclose(losses[0], losses[1], rtol=rtol, atol=atol):
        return f"{name} loss {losses[1].item():.6g} != {ref} loss {losses[0].item():.6g}"
    if differ := sorted(set(grads[0]) ^ set(grads[1])):
        return f"{name} and {ref} give gradients to different parameters: {_names(differ)}"
    if wrong := [
        n for n, a in grads[0].items() if not torch.allclose(a, grads[1][n], rtol=max(rtol, 1e-4), atol=atol)
    ]:
        return f"{name}: {len(wrong)} gradients differ from {ref}'s: {_names(sorted(wrong))}"
    if moved := sorted(n for n, b in buffers[0].items() if not torch.equal(b, buffers[1][n])):
        return (
            f"{name}: {len(moved)} buffers differ from {ref}'s after one forward and backward "
            f"(the recomputed forward updated them again): {_names(moved)}"
        )
    return None


def _strategy_problem(
    start: ModelInstance,
    device: Device,
    strategy: Strategy,
    dtype: str,
    metrics: dict[str, dict],
    cases: dict[str, Case],
) -> str | None:
    """The checks of a `checkpoint` or `lora` strategy (run once per group and strategy):
    checkpointing keeps the block inputs only, computes what its reference computes and keeps no
    more activations than it (where this process measured both); LoRA's adapters are a no-op
    before the first step. (Base weights bitwise unchanged and every adapter moved:
    `check_after_steps`.)"""
    if strategy.lora:
        return lora_output_mismatch(start, device, dtype)
    problem = checkpoint_violation(start, device, strategy, dtype) or checkpoint_mismatch(
        start, device, strategy, dtype
    )
    if problem is not None:
        return problem
    activations = "mem_activations_bytes"
    for variant, case in cases.items():
        reference = f"{case.optimizer}/{strategy.reference.name}"
        if case.strategy == strategy.name and activations in metrics.get(variant, {}):
            if activations in metrics.get(reference, {}):
                ours, theirs = metrics[variant][activations], metrics[reference][activations]
                if ours > theirs:
                    return (
                        f"{strategy.name} keeps more activations than {strategy.reference.name} "
                        f"({ours} > {theirs} bytes)"
                    )
    return None


def measure_finetune_group(
    spec: ModelSpec,
    device: Device,
    batch_size: int,
    profile: Profile,
    variants: Sequence[str],
    dtype: str = FLOAT32,
    memory: bool = True,
    checks: bool | None = None,
) -> dict[str, CaseResult]:
    """Measure the asked-for `<optimizer>/<strategy>` variants of one model, device and batch
    size, interleaved. With `memory`, each variant's memory is first measured alone
    (`measure_variant_memory`: nothing of another variant is live meanwhile). Then each variant
    gets one untimed step (creating optimizer state) and, with `checks` (default: as `memory`),
    its strategy's checks (`frozen_nograd`: no_grad; `checkpoint`, `lora`: `_strategy_problem`;
    deterministic, so `runner.run_group` has a group's first two processes run them, not every
    process: 0.6 s of a 5 s batch-32 CNN process; a failure in either fails the pooled case);
    then all variants are timed round-robin, one training step per call, and checked against
    their strategy's promise (`check_after_steps`, in every process). The `full` variant of each
    optimizer is always measured, because the ratios need it."""
    run_checks = memory if checks is None else checks
    group = Case(FINETUNE, spec.name, device.kind, "", batch_size, dtype)
    asked = [group.with_variant(v) for v in variants]
    optimizers = dict.fromkeys(c.optimizer for c in asked)
    references = [replace(group, optimizer=o, strategy=FULL) for o in optimizers]
    cases = {c.variant: c for c in dict.fromkeys([*references, *asked])}
    wanted = list(cases)
    results: dict[str, CaseResult] = {}
    steps: dict[str, TrainStep] = {}
    metrics: dict[str, dict] = {}
    promises: dict[str, Promise] = {}
    frozen_before: dict[str, dict[str, torch.Tensor]] = {}
    trainable_before: dict[str, dict[str, torch.Tensor]] = {}
    try:
        start = template(spec, batch_size)
        n_blocks = len(start.blocks)
        template_iterations, items = start.iterations, start.items_per_batch or batch_size
        by_name = {s.name: s for s in strategies(n_blocks)}
    except Exception as exc:  # noqa: BLE001
        device.release_memory()
        return {v: failure(c, exc) for v, c in cases.items()}
    modules: dict[str, tuple[ModuleMemory, ...]] = {}
    if memory:
        for variant in wanted:
            optimizer, strategy_name = cases[variant].optimizer, cases[variant].strategy
            try:
                strategy = by_name[strategy_name]
                metrics[variant], modules[variant] = measure_variant_memory(
                    start, strategy, optimizer, device, dtype
                )
            except Exception as exc:  # noqa: BLE001
                device.release_memory()
                results[variant] = failure(cases[variant], exc)
    mismatch: dict[str, str | None] = {}
    problems: dict[str, str | None] = {}  # the checkpoint and lora checks, once per strategy
    for variant in wanted:
        if variant in results:
            continue
        optimizer, strategy_name = cases[variant].optimizer, cases[variant].strategy
        case = cases[variant]
        try:
            strategy = by_name[strategy_name]
            promises[variant] = promise(start, strategy)
            step = TrainStep(copy.deepcopy(start), strategy, optimizer, device, dtype)
            frozen = frozen_state(step.model, promises[variant])  # before the first step
            loss = step()  # first step: optimizer state comes into being
            metrics[variant] = metrics.get(variant, {}) | {
                "trainable_params": sum(p.numel() for p in step.trainable),
                "total_params": sum(p.numel() for p in step.model.parameters()),
                "frozen_blocks": strategy.frozen_blocks,
            }
            if step.lora_plan is not None:
                metrics[variant] |= {
                    "lora_rank": step.lora_plan.rank,
                    "lora_targets": step.lora_plan.recorded,
                }
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()}")
            if (strategy.checkpoint or strategy.lora) and run_checks:
                if strategy.name not in problems:
                    problems[strategy.name] = _strategy_problem(
                        start, device, strategy, dtype, metrics, cases
                    )
                if problem := problems[strategy.name]:
                    results[variant] = CaseResult(case, FAILED, problem, metrics=metrics[variant])
                    continue
            if strategy.nograd and run_checks:
                if optimizer not in mismatch:
                    mismatch[optimizer] = nograd_trunk_violation(
                        start, device, optimizer, n_blocks, dtype
                    ) or nograd_mismatch(start, device, optimizer, n_blocks, dtype)
                problem = mismatch[optimizer]
                if problem:
                    results[variant] = CaseResult(case, FAILED, problem, metrics=metrics[variant])
                    continue
        except Exception as exc:  # noqa: BLE001
            device.release_memory()
            results[variant] = failure(case, exc, **metrics.get(variant, {}))
            continue
        steps[variant] = step
        frozen_before[variant] = frozen
        trainable_before[variant] = trainable_state(step.model, promises[variant])

    del start
    timed_variants = [Variant(v, steps[v]) for v in wanted if v in steps]
    iterations = profile.iterations or calibrate_iterations(
        timed_variants, device, profile.min_round_s, start=max(1, template_iterations // 2), warmup=False
    )
    timed = measure_interleaved(
        timed_variants,
        device,
        rounds=profile.finetune_rounds,
        warmup_rounds=profile.finetune_warmup_rounds,
        iterations=iterations,
    )
    for variant, error in timed.errors.items():
        results[variant] = failure(cases[variant], error, **metrics[variant])
    for variant, samples in timed.samples.items():
        step = steps[variant]
        try:
            problem = check_after_steps(
                step, promises[variant], frozen_before.pop(variant), trainable_before.pop(variant)
            )
        except Exception as exc:  # noqa: BLE001
            device.release_memory()
            results[variant] = failure(cases[variant], exc, **metrics[variant])
            continue
        if problem is not None:
            results[variant] = CaseResult(cases[variant], FAILED, problem, metrics=metrics[variant])
            continue
        energy = energy_columns(device.energy(step, profile.energy_seconds), items)
        results[variant] = CaseResult(
            cases[variant],
            samples=samples,
            items_per_batch=items,
            metrics=metrics[variant] | energy,
            modules=modules.get(variant, ()),
        )
    return {v: results[v] for v in wanted}
