"""A Transformer encoder classifier built on `nn.TransformerEncoder`, over token ids."""

from __future__ import annotations

import torch
from torch import nn

from bench_lib.models.base import Inputs, ModelSpec, StagedModel

VOCAB = 1000
SEQ_LEN = 32
D_MODEL = 128
HEADS = 4
FF = 256
LAYERS = 2
CLASSES = 10


class Embedding(nn.Module):
    """Token plus learned position embeddings."""

    def __init__(self, vocab: int, seq_len: int, d_model: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tokens(ids) + self.positions[: ids.shape[1]]


class MeanPoolHead(nn.Module):
    def __init__(self, d_model: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=1))


class TransformerClassifier(StagedModel):
    """Blocks: the embedding, then each encoder layer; the head mean-pools and classifies.

    `forward` calls the `nn.TransformerEncoder` as a whole, so that in `eval()` with grad
    disabled PyTorch can take its fused fast path; `forward_stages` runs layer by layer.
    """

    def __init__(
        self,
        vocab: int = VOCAB,
        seq_len: int = SEQ_LEN,
        d_model: int = D_MODEL,
        heads: int = HEADS,
        ff: int = FF,
        layers: int = LAYERS,
        classes: int = CLASSES,
    ) -> None:
        super().__init__()
        self.embedding = Embedding(vocab, seq_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=ff, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = MeanPoolHead(d_model, classes)

    def trunk(self) -> list[nn.Module]:
        return [self.embedding, *self.encoder.layers]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embedding(ids)))


def _inputs(batch_size: int) -> Inputs:
    return (torch.randint(0, VOCAB, (batch_size, SEQ_LEN)),)


def _target(batch_size: int) -> torch.Tensor:
    return torch.randint(0, CLASSES, (batch_size,))


SPEC = ModelSpec(
    name="transformer",
    build=TransformerClassifier,
    make_inputs=_inputs,
    make_target=_target,
    description=f"nn.TransformerEncoder, {LAYERS} layers, d_model {D_MODEL}, {HEADS} heads, seq {SEQ_LEN}",
    iterations=lambda batch_size: 4 if batch_size < 16 else 1,
)
