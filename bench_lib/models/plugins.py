"""Your own model in the suite: `FILE.py:FUNCTION` or `package.module:FUNCTION`.

The factory takes the batch size and returns `(model, inputs)`, where `inputs` is a CPU tensor
or a tuple of CPU tensors (the positional arguments of the forward), or a
`bench_lib.ModelInstance` that also names the blocks to freeze, a loss and a target (which make
the fine-tuning suite apply):

    def make_model(batch_size):
        model = torchvision.models.resnet18()
        return model, torch.randn(batch_size, 3, 224, 224)

A reference is checked when a run is configured (`check_user_model`), so that every mistake a
user can make is one clear line before anything is measured; worker processes load the same
reference again (`user_spec`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from bench_lib.errors import UserError
from bench_lib.models.base import ModelInstance, ModelSpec
from bench_lib.records.results import describe_error

DEFAULT_FACTORY = "make_model"


def is_reference(text: str) -> bool:
    """Whether a model name is a user reference (`FILE.py:FUNCTION`, `package.module:FUNCTION`)."""
    return ":" in text or _is_file_target(text)


def absolute_reference(ref: str, base: Path | None = None) -> str:
    """`ref` with a file path made absolute (against `base`, default the working directory), so
    that worker processes and other folders load the same file."""
    target, _, func = ref.rpartition(":")
    if not _is_file_target(target):
        return ref
    path = Path(target)
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return f"{path.resolve()}:{func}"


def display_name(ref: str) -> str:
    """The `model` column of a user model: the file or module name, plus `.FUNCTION` when the
    factory is not called `make_model` (e.g. `my_net`, `my_net.make_small`)."""
    target, _, func = ref.rpartition(":")
    stem = Path(target).stem if _is_file_target(target) else target.rpartition(".")[2]
    return stem if func == DEFAULT_FACTORY else f"{stem}.{func}"


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _import_file(path: Path) -> ModuleType:
    name = f"bench_lib_user_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: say what broke, in one line
        del sys.modules[name]
        raise UserError(f"importing {path} failed: {describe_error(exc)}") from None
    return module


def _import_module(target: str) -> ModuleType:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise UserError(f"module {target!r} not found (is it importable from here?)") from None
        raise UserError(f"importing {target} failed: {describe_error(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"importing {target} failed: {describe_error(exc)}") from None


def load_factory(ref: str) -> Callable[[int], Any]:
    """The factory function `ref` names; `UserError` for every way the reference can be wrong."""
    target, sep, func = ref.rpartition(":")
    if not sep or not target or not func.isidentifier():
        raise UserError(f"model {ref!r}: expected FILE.py:FUNCTION or package.module:FUNCTION")
    if _is_file_target(target):
        path = Path(target)
        if not path.is_file():
            raise UserError(f"model {ref!r}: file {target} not found")
        module = _import_file(path.resolve())
    else:
        module = _import_module(target)
    factory = getattr(module, func, None)
    if factory is None:
        raise UserError(f"model {ref!r}: {target} defines no {func!r}")
    if not callable(factory):
        raise UserError(f"model {ref!r}: {func} is a {type(factory).__name__}, not a function")
    return factory


def as_instance(value: Any, ref: str) -> ModelInstance:
    """Check what a factory returned and normalise it to a `ModelInstance` (inputs a tuple)."""
    where = f"model {ref!r}"
    if isinstance(value, ModelInstance):
        instance = value
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        instance = ModelInstance(value[0], value[1])
    else:
        raise UserError(
            f"{where}: the factory must return (model, inputs) or a bench_lib.ModelInstance, "
            f"got {_what(value)}"
        )
    if not isinstance(instance.model, nn.Module):
        raise UserError(f"{where}: the model is {_what(instance.model)}, not a torch.nn.Module")
    inputs = instance.inputs
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    if not isinstance(inputs, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise UserError(
            f"{where}: inputs must be a tensor or a tuple of tensors, got {_what(instance.inputs)}"
        )
    for i, t in enumerate(inputs):
        if t.device.type != "cpu":
            raise UserError(
                f"{where}: inputs must be on the CPU (the suite moves them to each device); "
                f"input {i} is on {t.device}"
            )
    devices = {str(p.device) for p in [*instance.model.parameters(), *instance.model.buffers()]}
    if devices - {"cpu"}:
        raise UserError(
            f"{where}: the model must be on the CPU (the suite moves it); it is on {sorted(devices)}"
        )
    members = {id(m) for m in instance.model.modules()}
    if any(id(b) not in members for b in instance.blocks):
        raise UserError(f"{where}: every block must be a submodule of the model")
    if instance.target is not None and (
        not isinstance(instance.target, torch.Tensor) or instance.target.device.type != "cpu"
    ):
        raise UserError(f"{where}: the target must be a CPU tensor, got {_what(instance.target)}")
    targets = instance.lora_targets
    if isinstance(targets, str) or not all(isinstance(t, str) and t for t in targets):
        raise UserError(f"{where}: lora_targets must be a list of module names, got {targets!r}")
    if instance.loss is not None and not callable(instance.loss):
        raise UserError(f"{where}: the loss must be callable, got {_what(instance.loss)}")
    instance.inputs = tuple(inputs)
    return instance


def _what(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor on {value.device}"
    return f"a {type(value).__module__}.{type(value).__qualname__}".replace("a builtins.", "a ")


@cache
def user_spec(ref: str) -> ModelSpec:
    """The `ModelSpec` of a user reference (its factory's return value is checked on each call;
    whatever the factory raises passes through, so that an out-of-memory error stays one)."""
    factory = load_factory(ref)
    return ModelSpec(
        name=display_name(ref),
        factory=lambda batch_size: as_instance(factory(batch_size), ref),
        description=f"user model {ref}",
    )


def check_user_model(ref: str) -> ModelSpec:
    """Load `ref` and call its factory once at batch size 1: `UserError` on any mistake."""
    spec = user_spec(ref)
    try:
        torch.manual_seed(0)
        spec.instantiate(1)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory: show its message
        func = ref.rpartition(":")[2]
        raise UserError(f"model {ref!r}: {func}(1) raised {describe_error(exc)}") from None
    return spec
