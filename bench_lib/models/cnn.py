"""A small ResNet-style CNN with batch norm, for 32x32 RGB images."""

from __future__ import annotations

import torch
from torch import nn

from bench_lib.models.base import Inputs, ModelSpec, StagedModel

IMAGE_SIZE = 32
CLASSES = 10


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a (projected when the shape changes) shortcut, then relu."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class SmallResNet(StagedModel):
    def __init__(self, width: int = 16, classes: int = CLASSES) -> None:
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.trunk_blocks = nn.ModuleList(
            [
                stem,
                BasicBlock(width, width),
                BasicBlock(width, 2 * width, stride=2),
                BasicBlock(2 * width, 4 * width, stride=2),
            ]
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, classes))


def _inputs(batch_size: int) -> Inputs:
    return (torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE),)


def _target(batch_size: int) -> torch.Tensor:
    return torch.randint(0, CLASSES, (batch_size,))


SPEC = ModelSpec(
    name="cnn",
    build=SmallResNet,
    make_inputs=_inputs,
    make_target=_target,
    description="ResNet-style CNN, 3 basic blocks with batch norm, 32x32 RGB input",
    iterations=lambda batch_size: 4 if batch_size < 16 else 1,
)
