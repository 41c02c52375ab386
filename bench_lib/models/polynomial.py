"""The seed example: `y = w1 * x + w2 * x**2` with w1 = 3 and w2 = 2 (so y = 3x + 2x^2)."""

from __future__ import annotations

import torch
from torch import nn

from bench_lib.models.base import Inputs, ModelSpec


class PolynomialNet(nn.Module):
    """Two trainable scalar weights; at x = 2 it gives 14, and MSE against 10 gives loss 16."""

    def __init__(self, w1: float = 3.0, w2: float = 2.0) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor([w1]))
        self.w2 = nn.Parameter(torch.tensor([w2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w1 * x + self.w2 * x**2


def _inputs(batch_size: int) -> Inputs:
    return (torch.randn(batch_size, 1),)


SPEC = ModelSpec(
    name="polynomial",
    build=PolynomialNet,
    make_inputs=_inputs,
    description="seed example y = 3x + 2x^2 (two scalar weights)",
    # A forward is a few microseconds: 256 calls make a round long enough to time well.
    iterations=lambda batch_size: 256,
)
