"""The built-in model zoo and the registry that names its models."""

from __future__ import annotations

from bench_lib.errors import UserError
from bench_lib.models import cnn, mlp, polynomial, transformer
from bench_lib.models.base import Inputs, ModelSpec, StagedModel, blocks_of

ZOO: dict[str, ModelSpec] = {
    spec.name: spec for spec in (mlp.SPEC, cnn.SPEC, transformer.SPEC, polynomial.SPEC)
}


def get_model(name: str) -> ModelSpec:
    """The zoo model called `name`; a `UserError` naming the known models otherwise."""
    try:
        return ZOO[name]
    except KeyError:
        raise UserError(f"unknown model {name!r} (known: {', '.join(ZOO)})") from None


__all__ = ["ZOO", "Inputs", "ModelSpec", "StagedModel", "blocks_of", "get_model"]
