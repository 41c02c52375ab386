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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bench_lib.cases import FINETUNE, Case, Profile
from bench_lib.devices import Device
from bench_lib.memory import SavedTensorCounter, storage_bytes
from bench_lib.models import ModelSpec, StagedModel, blocks_of
from bench_lib.results import FAILED, CaseResult, failure
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


def strategy_names(spec: ModelSpec) -> list[str]:
    """The strategy names of a zoo model ([] when it cannot be fine-tuned)."""
    if spec.make_target is None:
        return []
    n_blocks = len(blocks_of(spec.build()))
    return [s.name for s in strategies(n_blocks)] if n_blocks else []


class TrainStep:
    """One model, optimizer and batch; calling it runs one training step.

    A step is forward, loss, backward, optimizer step, `zero_grad(set_to_none=True)`. The model
    is in `train()` mode; the optimizer is built over the trainable parameters only.
    """

    def __init__(
        self, spec: ModelSpec, strategy: Strategy, optimizer: str, device: Device, batch_size: int
    ) -> None:
        if spec.make_target is None:
            raise ValueError(f"model {spec.name!r} has no target for fine-tuning")
        torch.manual_seed(SEED)
        model = spec.build()
        if not isinstance(model, StagedModel):
            raise ValueError(f"model {spec.name!r} exposes no blocks to freeze")
        self.model = model.to(device.name).train()
        self.strategy = strategy
        for block in blocks_of(self.model)[: strategy.frozen_blocks]:
            block.requires_grad_(False)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.frozen = [p for p in self.model.parameters() if not p.requires_grad]
        self.optimizer = OPTIMIZERS[optimizer](self.trainable)
        torch.manual_seed(SEED + 1)
        self.inputs = tuple(t.to(device.name) for t in spec.make_inputs(batch_size))
        self.target = spec.make_target(batch_size).to(device.name)
        self.loss_fn = spec.loss

    def forward_loss(self) -> torch.Tensor:
        model, k = self.model, self.strategy.frozen_blocks
        if self.strategy.nograd:
            with torch.no_grad():
                features = model.forward_stages(*self.inputs, stop=k)
            output = model.forward_stages(features, start=k)
        else:
            output = model(*self.inputs)
        return self.loss_fn(output, self.target)

    def __call__(self) -> torch.Tensor:
        loss = self.forward_loss()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def optimizer_state_bytes(self) -> int:
        return storage_bytes(
            t
            for state in self.optimizer.state.values()
            for t in state.values()
            if isinstance(t, torch.Tensor)
        )

    def measure_memory(self, device: Device) -> dict[str, int]:
        """Memory by category of one step, in bytes (run it after a first step, so the
        optimizer state exists: the figures are those of a steady-state step).

        - `mem_params_bytes`: all parameters, trainable or frozen;
        - `mem_grads_bytes`: the `.grad` tensors right after backward;
        - `mem_optimizer_state_bytes`: every tensor in the optimizer's state after the step
          (AdamW: exp_avg, exp_avg_sq and a one-element `step` per parameter; SGD: momentum);
        - `mem_activations_bytes`: bytes autograd saved for backward in the forward (parameters
          excluded), all alive together at the end of the forward;
        - `mem_peak_bytes`: peak of tensor memory during the whole step beyond what was live
          before it (activations, gradients, temporaries).
        """
        peak, saved = device.peak_counter(), SavedTensorCounter(self.model.parameters())
        with peak.track():
            with saved.track():
                loss = self.forward_loss()
            loss.backward()
            grads = storage_bytes(p.grad for p in self.model.parameters() if p.grad is not None)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        device.synchronize()
        return {
            "mem_params_bytes": storage_bytes(self.model.parameters()),
            "mem_grads_bytes": grads,
            "mem_optimizer_state_bytes": self.optimizer_state_bytes(),
            "mem_activations_bytes": saved.saved_bytes,
            "mem_peak_bytes": peak.peak_bytes,
        }


def check_after_steps(
    step: TrainStep, frozen_before: list[torch.Tensor], trainable_before: list[torch.Tensor]
) -> str | None:
    """Why the steps broke the strategy's promises, or None."""
    for p, before in zip(step.frozen, frozen_before, strict=True):
        if p.grad is not None:
            return "a frozen parameter has a .grad"
        if not torch.equal(p.detach(), before):
            return "a frozen parameter changed"
    unchanged = sum(torch.equal(p.detach(), b) for p, b in zip(step.trainable, trainable_before, strict=True))
    if unchanged:
        return f"{unchanged} of {len(step.trainable)} trainable parameters did not change"
    return None


def nograd_mismatch(
    spec: ModelSpec, device: Device, batch_size: int, optimizer: str, n_blocks: int
) -> str | None:
    """Whether `frozen_nograd` computes the same loss and head gradients as `frozen_<n>` for the
    same input and weights (same seed, so dropout draws the same masks)."""
    grads, losses = [], []
    for strategy in (Strategy(f"frozen_{n_blocks}", n_blocks), Strategy(NOGRAD, n_blocks, nograd=True)):
        step = TrainStep(spec, strategy, optimizer, device, batch_size)
        torch.manual_seed(SEED + 2)
        loss = step.forward_loss()
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.detach().clone() for p in step.model.head.parameters()])
    if not torch.allclose(losses[0], losses[1], rtol=1e-5, atol=1e-6):
        return f"frozen_nograd loss {losses[1].item():.6g} != frozen_{n_blocks} loss {losses[0].item():.6g}"
    for a, b in zip(*grads, strict=True):
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-6):
            return f"frozen_nograd head gradients differ from frozen_{n_blocks}'s"
    return None


def measure_finetune_group(
    spec: ModelSpec,
    device: Device,
    batch_size: int,
    profile: Profile,
    variants: Sequence[str],
) -> dict[str, CaseResult]:
    """Measure the asked-for `<optimizer>/<strategy>` variants of one model, device and batch
    size, interleaved. Each variant first gets one untimed step (creating optimizer state), one
    step with memory accounting, and the checks; then all variants are timed round-robin, one
    training step per call. The `full` variant of each optimizer is always measured, because
    the ratios need it."""
    optimizers = dict.fromkeys(v.split("/")[0] for v in variants)
    wanted = list(dict.fromkeys([*(f"{o}/{FULL}" for o in optimizers), *variants]))
    cases = {}
    for v in wanted:
        optimizer, strategy = v.split("/")
        cases[v] = Case(
            FINETUNE, spec.name, device.kind, "", batch_size, strategy=strategy, optimizer=optimizer
        )
    results: dict[str, CaseResult] = {}
    steps: dict[str, TrainStep] = {}
    metrics: dict[str, dict] = {}
    snapshots: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    try:
        n_blocks = len(blocks_of(spec.build()))
        by_name = {s.name: s for s in strategies(n_blocks)}
    except Exception as exc:  # noqa: BLE001
        return {v: failure(c, exc) for v, c in cases.items()}
    mismatch: dict[str, str | None] = {}
    for variant in wanted:
        optimizer, strategy_name = variant.split("/")
        case = cases[variant]
        try:
            strategy = by_name[strategy_name]
            step = TrainStep(spec, strategy, optimizer, device, batch_size)
            loss = step()  # first step: optimizer state comes into being
            metrics[variant] = step.measure_memory(device) | {
                "trainable_params": sum(p.numel() for p in step.trainable),
                "total_params": sum(p.numel() for p in step.model.parameters()),
                "frozen_blocks": strategy.frozen_blocks,
            }
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()}")
            if strategy.nograd:
                if optimizer not in mismatch:
                    mismatch[optimizer] = nograd_mismatch(spec, device, batch_size, optimizer, n_blocks)
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

    iterations = profile.iterations or max(1, spec.iterations(batch_size) // 2)
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
        results[variant] = CaseResult(
            cases[variant],
            samples=samples,
            items_per_batch=spec.items_per_batch(batch_size),
            metrics=metrics[variant],
        )
    return {v: results[v] for v in wanted}
