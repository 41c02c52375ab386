"""What the suite needs to know about a model: the `ModelSpec`, and the staged-model convention.

A zoo model is a `StagedModel`: its forward is equivalent to applying `stages` one after the
other, the last stage being the head. Fine-tuning freezes the first k stages (`blocks`) or runs
them under `torch.no_grad()` as a feature extractor, so it needs exactly this split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
    """

    name: str
    build: Callable[[], nn.Module]
    make_inputs: Callable[[int], Inputs]
    description: str = ""
    make_target: Callable[[int], torch.Tensor] | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = default_loss
    iterations: Callable[[int], int] = field(default=lambda batch_size: 1)

    def items_per_batch(self, batch_size: int) -> int:
        return batch_size


def blocks_of(model: nn.Module) -> Sequence[nn.Module]:
    """The freezable trunk blocks of a model, in order (empty for a model without stages)."""
    return model.trunk() if isinstance(model, StagedModel) else []
