"""Benchmark your own model with bench_lib: a complete example (the tests run it).

    python -m bench_lib run --model examples/custom_model.py:make_model --out my.csv
    python -m bench_lib run --model examples/custom_model.py:make_trainable --out my.csv
    make bench MODELS=examples/custom_model.py:make_trainable

`make_model` is the simplest form: take the batch size, return `(model, inputs)`, with `inputs`
a CPU tensor or a tuple of CPU tensors (the forward's positional arguments). The suite moves
both to each device, and measures the forward with autograd on, under `torch.no_grad()` and
under `torch.inference_mode()`.

`make_trainable` returns a `bench_lib.ModelInstance` that also names the blocks to freeze (in
forward order), a loss and a target: then the fine-tuning suite measures it too, training all
of it, with the first half or all blocks frozen, and with the frozen blocks under no_grad.
"""

from __future__ import annotations

import torch
from torch import nn

from bench_lib import ModelInstance

VOCAB, DIM, CLASSES, SEQ_LEN = 5000, 128, 4, 64


class ConvBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, padding=1, bias=False)  # BatchNorm follows
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.norm(self.conv(x)))


class TextCNN(nn.Module):
    """Token ids -> embedding -> 3 residual 1-D conv blocks -> mean over time -> classes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(ConvBlock(DIM) for _ in range(3))
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids).transpose(1, 2)  # (batch, dim, time)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=2))


def make_model(batch_size: int) -> tuple[nn.Module, torch.Tensor]:
    return TextCNN(), torch.randint(0, VOCAB, (batch_size, SEQ_LEN))


def make_trainable(batch_size: int) -> ModelInstance:
    model, ids = make_model(batch_size)
    return ModelInstance(
        model,
        ids,
        blocks=[model.embed, *model.blocks],  # frozen from the input side
        loss=nn.functional.cross_entropy,
        target=torch.randint(0, CLASSES, (batch_size,)),
    )
