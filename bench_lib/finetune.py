"""The fine-tuning suite: training steps with frozen blocks, and their memory by category.

Strategies for a model with n trunk blocks (the head is always trained):
- `full`: every parameter trainable;
- `frozen_<k>`: the first k blocks frozen with `requires_grad_(False)`; the suite runs a partial
  depth k = n // 2 and k = n ("all but the head", i.e. head-only training);
- `frozen_nograd`: the same n frozen blocks, run under `torch.no_grad()` as a feature extractor,
  only the head in autograd. It trains the same parameters as `frozen_<n>`: head-only training
  done the other way, so the two are compared rather than a separate `head_only` case.
"""

from __future__ import annotations

import copy
import gc
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from bench_lib.cases import FINETUNE, Case, Profile
from bench_lib.devices import Device
from bench_lib.memory import SavedTensorCounter, storage_bytes
from bench_lib.memory_trace import AUTOGRAD, LOSS, OPTIMIZER, MemoryTrace, ModuleMemory, device_counters
from bench_lib.models import ModelInstance, ModelSpec, StagedModel
from bench_lib.precision import FLOAT32, autocast, grad_scaler
from bench_lib.results import FAILED, CaseResult, failure
from bench_lib.telemetry import energy_columns
from bench_lib.timing import Variant, measure_interleaved

SEED = 0
FULL = "full"
NOGRAD = "frozen_nograd"

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3),
}


@dataclass(frozen=True)
class Strategy:
    name: str
    frozen_blocks: int
    nograd: bool = False


def strategies(n_blocks: int) -> list[Strategy]:
    """The strategies for a model with `n_blocks` trunk blocks (see the module docstring)."""
    partial = max(1, n_blocks // 2)
    out = [Strategy(FULL, 0), Strategy(f"frozen_{partial}", partial)]
    if n_blocks != partial:
        out.append(Strategy(f"frozen_{n_blocks}", n_blocks))
    out.append(Strategy(NOGRAD, n_blocks, nograd=True))
    return out


@cache
def strategy_names(spec: ModelSpec) -> list[str]:
    """The strategy names of a model ([] when it cannot be fine-tuned: no blocks, loss or target)."""
    torch.manual_seed(SEED)
    instance = spec.instantiate(1)
    return [s.name for s in strategies(len(instance.blocks))] if instance.trainable else []


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
    is in `train()` mode; the optimizer is built over the trainable parameters only. The
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
        self.model = instance.model.to(device.name).train()
        self.strategy = strategy
        self.blocks = list(instance.blocks)
        frozen_blocks = self.blocks[: strategy.frozen_blocks]
        for block in frozen_blocks:
            block.requires_grad_(False)
        self._staged = isinstance(self.model, StagedModel)
        if strategy.nograd and not self._staged:
            _NoGradBlocks(frozen_blocks)
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
                    features = model.forward_stages(*self.inputs, stop=k)
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


def check_after_steps(
    step: TrainStep, frozen_before: list[torch.Tensor], trainable_before: list[torch.Tensor]
) -> str | None:
    """Why the steps broke the strategy's promises, or None."""
    for p, before in zip(step.frozen, frozen_before, strict=True):
        if p.grad is not None:
            return "a frozen parameter has a .grad"
        if not torch.equal(p.detach(), before):
            return "a frozen parameter changed"
    # A parameter whose gradient is exactly zero may legitimately stay put under SGD (e.g. a conv
    # bias before BatchNorm), so the promise is that training moved the trainable set at all.
    if all(torch.equal(p.detach(), b) for p, b in zip(step.trainable, trainable_before, strict=True)):
        return f"none of the {len(step.trainable)} trainable parameters changed"
    return None


def nograd_mismatch(
    instance: ModelInstance, device: Device, optimizer: str, n_blocks: int, dtype: str = FLOAT32
) -> str | None:
    """Whether `frozen_nograd` computes the same loss and gradients (of the trainable
    parameters, the same set) as `frozen_<n>` for the same input and weights (same seed, so
    dropout draws the same masks)."""
    grads, losses = [], []
    for strategy in (Strategy(f"frozen_{n_blocks}", n_blocks), Strategy(NOGRAD, n_blocks, nograd=True)):
        step = TrainStep(copy.deepcopy(instance), strategy, optimizer, device, dtype)
        torch.manual_seed(SEED + 2)
        loss = step.forward_loss()
        step.backward(loss)
        losses.append(loss.detach())
        grads.append([p.grad.detach().clone() for p in step.trainable if p.grad is not None])
    rtol, atol = (1e-5, 1e-6) if dtype == FLOAT32 else (2e-2, 2e-2)
    if not torch.allclose(losses[0], losses[1], rtol=rtol, atol=atol):
        return f"frozen_nograd loss {losses[1].item():.6g} != frozen_{n_blocks} loss {losses[0].item():.6g}"
    for a, b in zip(*grads, strict=True):
        if not torch.allclose(a, b, rtol=max(rtol, 1e-4), atol=atol):
            return f"frozen_nograd head gradients differ from frozen_{n_blocks}'s"
    return None


def measure_finetune_group(
    spec: ModelSpec,
    device: Device,
    batch_size: int,
    profile: Profile,
    variants: Sequence[str],
    dtype: str = FLOAT32,
    memory: bool = True,
) -> dict[str, CaseResult]:
    """Measure the asked-for `<optimizer>/<strategy>` variants of one model, device and batch
    size, interleaved. With `memory`, each variant's memory is first measured alone
    (`measure_variant_memory`: nothing of another variant is live meanwhile). Then each variant
    gets one untimed step (creating optimizer state) and the checks; then all variants are
    timed round-robin, one training step per call. The `full` variant of each optimizer is
    always measured, because the ratios need it."""
    optimizers = dict.fromkeys(v.split("/")[0] for v in variants)
    wanted = list(dict.fromkeys([*(f"{o}/{FULL}" for o in optimizers), *variants]))
    group = Case(FINETUNE, spec.name, device.kind, "", batch_size, dtype)
    cases = {v: group.with_variant(v) for v in wanted}
    results: dict[str, CaseResult] = {}
    steps: dict[str, TrainStep] = {}
    metrics: dict[str, dict] = {}
    snapshots: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
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
            optimizer, strategy_name = variant.split("/")
            try:
                strategy = by_name[strategy_name]
                metrics[variant], modules[variant] = measure_variant_memory(
                    start, strategy, optimizer, device, dtype
                )
            except Exception as exc:  # noqa: BLE001
                device.release_memory()
                results[variant] = failure(cases[variant], exc)
    mismatch: dict[str, str | None] = {}
    for variant in wanted:
        if variant in results:
            continue
        optimizer, strategy_name = variant.split("/")
        case = cases[variant]
        try:
            strategy = by_name[strategy_name]
            step = TrainStep(copy.deepcopy(start), strategy, optimizer, device, dtype)
            loss = step()  # first step: optimizer state comes into being
            metrics[variant] = metrics.get(variant, {}) | {
                "trainable_params": sum(p.numel() for p in step.trainable),
                "total_params": sum(p.numel() for p in step.model.parameters()),
                "frozen_blocks": strategy.frozen_blocks,
            }
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()}")
            if strategy.nograd:
                if optimizer not in mismatch:
                    mismatch[optimizer] = nograd_mismatch(start, device, optimizer, n_blocks, dtype)
                if mismatch[optimizer]:
                    results[variant] = CaseResult(case, FAILED, mismatch[optimizer], metrics=metrics[variant])
                    continue
        except Exception as exc:  # noqa: BLE001
            device.release_memory()
            results[variant] = failure(case, exc, **metrics.get(variant, {}))
            continue
        steps[variant] = step
        snapshots[variant] = (
            [p.detach().clone() for p in step.frozen],
            [p.detach().clone() for p in step.trainable],
        )

    del start
    iterations = profile.iterations or max(1, template_iterations // 2)
    timed = measure_interleaved(
        [Variant(v, steps[v]) for v in wanted if v in steps],
        device,
        rounds=profile.finetune_rounds,
        warmup_rounds=profile.finetune_warmup_rounds,
        iterations=iterations,
    )
    for variant, exc in timed.errors.items():
        results[variant] = failure(cases[variant], exc, **metrics[variant])
    for variant, samples in timed.samples.items():
        step = steps[variant]
        problem = check_after_steps(step, *snapshots[variant])
        if problem is None:
            loss = step.forward_loss().item()
            problem = None if math.isfinite(loss) else f"loss is {loss} after the measured steps"
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
