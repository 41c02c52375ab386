"""What the suite needs to know about a model: the `ModelSpec`, and the staged-model convention.

A zoo model is a `StagedModel`: its forward is equivalent to applying `stages` one after the
other, the last stage being the head. Fine-tuning freezes the first k stages (`blocks`) or runs
them under `torch.no_grad()` as a feature extractor, so it needs exactly this split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Inputs = tuple[torch.Tensor, ...]


class StagedModel(nn.Module):
    """A model whose forward is `head(block_n(...block_1(x)))`.

    Subclasses set `trunk_blocks` (an `nn.ModuleList` of trunk blocks, in order) and `head`, or
    override `trunk()`. `forward` may take a faster route (e.g. a fused encoder) as long as it
    computes the same function as `forward_stages`.
    """

    trunk_blocks: nn.ModuleList
    head: nn.Module

    def trunk(self) -> list[nn.Module]:
        return list(self.trunk_blocks)

    def stages(self) -> list[nn.Module]:
        return [*self.trunk(), self.head]

    def forward_stages(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for stage in self.stages()[start:stop]:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output, target)


Loss = Callable[[Any, torch.Tensor], torch.Tensor]


@dataclass
class ModelInstance:
    """One model at one batch size, on the CPU, ready to be measured.

    This is also what a user's factory may return instead of a plain `(model, inputs)` pair (see
    `bench_lib.models.plugins`).

    Parameters
    ----------
    model:
        The `nn.Module`, on the CPU.
    inputs:
        The positional arguments of `model`'s forward: a CPU tensor or a tuple of CPU tensors
        (the suite moves them to each device).
    blocks:
        The freezable blocks, in forward order: fine-tuning freezes the first k of them
        (`requires_grad_(False)`) or runs them under `torch.no_grad()`. Empty: no fine-tuning.
    loss:
        `(output, target) -> scalar loss` of a training step. None: no fine-tuning.
    target:
        The CPU tensor the loss compares the output with. None: no fine-tuning.
    items_per_batch:
        Items one forward processes (for throughput); None means the batch size.
    iterations:
        Forward calls per timed round (longer rounds for very fast models).
    lora_targets:
        The layers the `lora` fine-tuning strategy adapts, as peft names them: a module inside
        the blocks whose path equals a name or ends with `.<name>` (e.g. `("query", "value")`).
        Empty: every Linear and Conv layer inside the blocks except those of an
        `nn.MultiheadAttention` (see `bench_lib.suites.finetune.lora`).
    """

    model: nn.Module
    inputs: Inputs | torch.Tensor
    blocks: Sequence[nn.Module] = ()
    loss: Loss | None = None
    target: torch.Tensor | None = None
    items_per_batch: int | None = None
    iterations: int = 1
    lora_targets: Sequence[str] = ()

    def input_tuple(self) -> Inputs:
        return (self.inputs,) if isinstance(self.inputs, torch.Tensor) else tuple(self.inputs)

    @property
    def trainable(self) -> bool:
        """Whether it can be fine-tuned: it has blocks to freeze, a loss and a target."""
        return bool(self.blocks) and self.loss is not None and self.target is not None


@dataclass(frozen=True)
class ModelSpec:
    """How to build one benchmark model and its inputs.

    Parameters
    ----------
    name:
        Registry name, used in case ids and the `model` column.
    build:
        Returns the model on the CPU, in its initial state (the caller seeds torch first).
    make_inputs:
        `batch_size -> tuple of CPU tensors`, the positional arguments of `forward`.
    make_target:
        `batch_size -> target` (on the CPU) for the loss of a training step, or None when the
        model is not meant for fine-tuning.
    loss:
        `(output, target) -> scalar loss` of a training step.
    iterations:
        `batch_size -> forward calls per timed round`: the fixed, recorded work per round, so
        that rounds are long enough for the clock and identical across runs.
    description:
        One line for listings and the report.
    factory:
        Instead of the above: `batch_size -> ModelInstance` (user and Hugging Face models).
    """

    name: str
    build: Callable[[], nn.Module] | None = None
    make_inputs: Callable[[int], Inputs] | None = None
    description: str = ""
    make_target: Callable[[int], torch.Tensor] | None = None
    loss: Loss = default_loss
    iterations: Callable[[int], int] = field(default=lambda batch_size: 1)
    factory: Callable[[int], ModelInstance] | None = None

    def instantiate(self, batch_size: int) -> ModelInstance:
        """The model and its inputs at `batch_size` (the caller seeds torch first): from
        `factory` when set, else from `build`, `make_inputs` and `make_target`."""
        if self.factory is not None:
            return self.factory(batch_size)
        if self.build is None or self.make_inputs is None:
            raise ValueError(f"model {self.name!r} has neither a factory nor build and make_inputs")
        model = self.build()
        inputs = self.make_inputs(batch_size)
        trainable = self.make_target is not None
        return ModelInstance(
            model,
            inputs,
            blocks=blocks_of(model),
            loss=self.loss if trainable else None,
            target=self.make_target(batch_size) if self.make_target is not None else None,
            items_per_batch=batch_size,
            iterations=self.iterations(batch_size),
        )


def blocks_of(model: nn.Module) -> Sequence[nn.Module]:
    """The freezable trunk blocks of a model, in order (empty for a model without stages)."""
    return model.trunk() if isinstance(model, StagedModel) else []
