"""Deliberate regressions, to prove that the gate catches them (`--bench-inject`).

`MODEL:slow=F` makes every forward of the model take (1 + F) times as long: the forward is timed
and then the CPU spins for F times that. `MODEL:mem=N` keeps N extra bytes alive during every
forward. Both act through forward hooks, so they apply to any model and change nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from bench_lib.errors import UserError
from bench_lib.models import ModelInstance, ModelSpec


@dataclass(frozen=True)
class Injection:
    model: str
    slow: float = 0.0
    mem_bytes: int = 0


def parse_injection(text: str | None) -> Injection | None:
    """`"mlp:slow=0.25"`, `"mlp:mem=4096"` or both (`"mlp:slow=0.1,mem=4096"`); empty: None."""
    if not text or not text.strip():
        return None
    model, _, settings = text.partition(":")
    values: dict[str, float] = {}
    for item in filter(None, settings.split(",")):
        name, _, value = item.partition("=")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"inject: {item!r} is not NAME=NUMBER") from None
    unknown = set(values) - {"slow", "mem"}
    if not model.strip() or not values or unknown or any(v < 0 for v in values.values()):
        raise UserError(f"inject: expected MODEL:slow=FRACTION and/or mem=BYTES, got {text!r}")
    return Injection(model.strip(), values.get("slow", 0.0), int(values.get("mem", 0)))


def inject(module: nn.Module, injection: Injection) -> nn.Module:
    """Add the injected cost to `module`'s forward (in place; returns the module)."""
    state: dict[str, object] = {}

    def before(mod: nn.Module, args: object) -> None:
        if injection.mem_bytes:
            state["extra"] = torch.zeros(injection.mem_bytes, dtype=torch.uint8, device=_device(mod))
        state["t0"] = time.perf_counter()

    def after(mod: nn.Module, args: object, output: object) -> None:
        if injection.slow:
            spent = time.perf_counter() - state["t0"]  # type: ignore[operator]
            until = time.perf_counter() + injection.slow * spent
            while time.perf_counter() < until:
                pass
        state.pop("extra", None)

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)
    return module


def _device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def injected_spec(spec: ModelSpec, injection: Injection | None) -> ModelSpec:
    """`spec` whose models carry `injection` when it names this model."""
    if injection is None or injection.model != spec.name:
        return spec

    def factory(batch_size: int) -> ModelInstance:
        instance = spec.instantiate(batch_size)
        inject(instance.model, injection)
        return instance

    return replace(spec, factory=factory)
