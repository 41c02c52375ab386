"""A multi-layer perceptron: three Linear+ReLU blocks and a Linear head."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from bench_lib.models.base import Inputs, ModelSpec, StagedModel

IN_FEATURES = 256
HIDDEN = 512
CLASSES = 10
DEPTH = 3


class MLP(StagedModel):
    def __init__(
        self,
        in_features: int = IN_FEATURES,
        hidden: int = HIDDEN,
        depth: int = DEPTH,
        classes: int = CLASSES,
    ) -> None:
        super().__init__()
        widths = [in_features] + [hidden] * depth
        self.trunk_blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(w_in, w_out), nn.ReLU()) for w_in, w_out in itertools.pairwise(widths)
        )
        self.head = nn.Linear(hidden, classes)


def _inputs(batch_size: int) -> Inputs:
    return (torch.randn(batch_size, IN_FEATURES),)


def _target(batch_size: int) -> torch.Tensor:
    return torch.randint(0, CLASSES, (batch_size,))


SPEC = ModelSpec(
    name="mlp",
    build=MLP,
    make_inputs=_inputs,
    make_target=_target,
    description=f"MLP {IN_FEATURES}-{'-'.join([str(HIDDEN)] * DEPTH)}-{CLASSES}, ReLU",
    iterations=lambda batch_size: 8 if batch_size < 16 else 2,
)
