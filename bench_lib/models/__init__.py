"""The built-in model zoo, the optional Hugging Face models, and the registry that names them.

`get_model` also takes a user reference (`FILE.py:FUNCTION`, `package.module:FUNCTION`; see
`bench_lib.models.plugins`).
"""

from __future__ import annotations

from bench_lib.errors import UserError
from bench_lib.models import cnn, hf, mlp, polynomial, transformer
from bench_lib.models.base import Inputs, ModelInstance, ModelSpec, StagedModel, blocks_of

ZOO: dict[str, ModelSpec] = {
    spec.name: spec for spec in (mlp.SPEC, cnn.SPEC, transformer.SPEC, polynomial.SPEC)
}
# Known by name but not in the default run: they need the `hf` extra (`make bench PROFILE=hf`).
OPTIONAL: dict[str, ModelSpec] = {spec.name: spec for spec in hf.SPECS}


def get_model(name: str) -> ModelSpec:
    """The model called `name` (zoo, optional, or a user reference); a `UserError` otherwise."""
    if name in ZOO:
        return ZOO[name]
    if name in OPTIONAL:
        return OPTIONAL[name]
    from bench_lib.models.plugins import is_reference, user_spec

    if is_reference(name):
        return user_spec(name)
    known = ", ".join([*ZOO, *OPTIONAL])
    raise UserError(f"unknown model {name!r} (known: {known}; or your own as FILE.py:FUNCTION)")


__all__ = [
    "OPTIONAL",
    "ZOO",
    "Inputs",
    "ModelInstance",
    "ModelSpec",
    "StagedModel",
    "blocks_of",
    "get_model",
]
