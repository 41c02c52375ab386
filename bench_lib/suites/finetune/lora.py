"""LoRA adapters for the `lora` fine-tuning strategy, through Hugging Face `peft` (the `lora`
extra; `make setup` installs it).

What `lora` trains: low-rank adapters (`lora_A`, `lora_B`, rank `RANK`) on the target layers
inside the model's blocks, and every parameter outside the blocks (the head) in full; every
parameter inside the blocks (the base) is frozen. The model runs in `train()`, as PEFT training
does: the blocks are adapted, not frozen, so dropout stays on and BatchNorm keeps its running
statistics up to date (its affine parameters are frozen with the base).

Targets. A `ModelInstance` may name them (`lora_targets`, peft's matching: a module whose path
equals a name or ends with `.<name>`); the Hugging Face models name their attention projections
(BERT `query` and `value`, GPT-2 `c_attn`: peft's own defaults for them). Otherwise every
`nn.Linear` and `nn.Conv1d/2d/3d` inside the blocks, except those inside an
`nn.MultiheadAttention`: its input projection is a raw parameter (no layer to wrap), its
`out_proj` forward is never called (`F.multi_head_attention_forward` reads the weight), so an
adapter there gets no gradient, and peft's own MultiheadAttention wrapper merges the adapter
into the weights before each forward and subtracts it after, which does not give the frozen
weights back bit for bit (the checks catch both: tests/test_finetune.py). Embeddings are not
targeted by default (the usual practice). A model whose blocks hold no target gets no `lora`.

peft is imported when this module is (it takes ~3.5 s, most of it `transformers`): the
fine-tuning measure module imports it at module level, so that the forkserver that starts the
worker processes imports it once per run, not once per worker.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from bench_lib.models import ModelInstance

RANK = 8
ALPHA = 16  # scaling alpha / r = 2
ADAPTER = "default"  # peft's adapter name: adapter parameters are `<target>.lora_A.default.weight`
# Dropout 0 (peft then uses no dropout layer): the checks compare losses and outputs exactly.
OPTIONS: dict[str, Any] = {"lora_dropout": 0.0, "bias": "none"}
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def available() -> bool:
    """Whether peft is installed (the `lora` extra), without importing it: importing peft takes
    ~4 s (it imports transformers), which the pytest process need not pay; worker processes get
    it from the forkserver (`measure.preload`)."""
    return importlib.util.find_spec("peft") is not None


@dataclass(frozen=True)
class LoraPlan:
    """What `lora` adapts in one model: the target modules by path (inside the blocks), the
    rank, and the names recorded in the report (`lora_targets`)."""

    targets: tuple[str, ...]
    rank: int = RANK
    names: tuple[str, ...] = ()
    fan_in_fan_out: bool = False  # GPT-2's Conv1D stores its weight transposed
    attention: tuple[str, ...] = ()  # the targets that are nn.MultiheadAttention (named, never default)

    @property
    def recorded(self) -> str:
        return "|".join(self.names or self.targets)

    def adapter_parameters(self, model: nn.Module) -> dict[str, tuple[int, ...]]:
        """The adapter parameters peft adds, by name, with their shapes, worked out from the
        untouched model (A: rank x fan-in, with the layer's kernel; B: fan-out x rank, 1x1)."""
        out: dict[str, tuple[int, ...]] = {}
        for path in self.targets:
            layer = model.get_submodule(path)
            a: tuple[int, ...]
            b: tuple[int, ...]
            if isinstance(layer, nn.MultiheadAttention):  # peft: in_proj, and out_proj inside
                e, r = layer.embed_dim, self.rank
                out[f"{path}.base_layer.out_proj.lora_A.{ADAPTER}.weight"] = (r, e)
                out[f"{path}.base_layer.out_proj.lora_B.{ADAPTER}.weight"] = (e, r)
                a, b = (r, e), (3 * e, r)
            elif isinstance(layer, nn.modules.conv._ConvNd):
                ones = (1,) * len(layer.kernel_size)
                a = (self.rank, layer.in_channels // layer.groups, *layer.kernel_size)
                b = (layer.out_channels, self.rank, *ones)
            elif isinstance(layer, nn.Linear):
                a, b = (self.rank, layer.in_features), (layer.out_features, self.rank)
            else:  # transformers' Conv1D: weight (in, out)
                weight = layer.get_parameter("weight")
                fan_in, fan_out = weight.shape
                a, b = (self.rank, fan_in), (fan_out, self.rank)
            out[f"{path}.lora_A.{ADAPTER}.weight"] = a
            out[f"{path}.lora_B.{ADAPTER}.weight"] = b
        return out


def base_name(name: str, plan: LoraPlan) -> str:
    """The name a parameter or buffer of the untouched model has once peft wrapped its layer
    (`<target>.weight` becomes `<target>.base_layer.weight`)."""
    for path in plan.targets:
        if name.startswith(path + "."):
            rest = name[len(path) + 1 :]
            if path in plan.attention and rest.startswith("out_proj."):  # wrapped too
                rest = "out_proj.base_layer." + rest.removeprefix("out_proj.")
            return f"{path}.base_layer.{rest}"
    return name


def _matches(path: str, name: str) -> bool:
    return path == name or path.endswith("." + name)


def _in_blocks(model: nn.Module, blocks: Sequence[nn.Module]) -> dict[str, nn.Module]:
    """The modules inside the blocks (the blocks included), by path, in the model's order."""
    inside = {id(m) for block in blocks for m in block.modules()}
    return {path: m for path, m in model.named_modules() if id(m) in inside}


def lora_plan(instance: ModelInstance) -> LoraPlan | None:
    """The plan for `instance` (see the module docstring); None when its blocks hold no target."""
    modules = _in_blocks(instance.model, instance.blocks)
    names = tuple(instance.lora_targets)
    if names:
        targets = [p for p in modules if any(_matches(p, n) for n in names)]
        if unmatched := [n for n in names if not any(_matches(p, n) for p in targets)]:
            raise ValueError(f"lora_targets {unmatched} match no module inside the blocks")
    else:
        in_attention = {
            id(sub)
            for m in modules.values()
            if isinstance(m, nn.MultiheadAttention)
            for sub in m.modules()
            if sub is not m
        }
        targets = [
            p for p, m in modules.items() if isinstance(m, DEFAULT_TYPES) and id(m) not in in_attention
        ]
    if not targets:
        return None
    conv1d = any(type(modules[p]).__name__ == "Conv1D" for p in targets)  # transformers' GPT-2 layer
    attention = tuple(p for p in targets if isinstance(modules[p], nn.MultiheadAttention))
    return LoraPlan(tuple(targets), names=names, fan_in_fan_out=conv1d, attention=attention)


def apply_lora(model: nn.Module, plan: LoraPlan) -> nn.Module:
    """Inject the adapters into `model` in place (peft's `inject_adapter_in_model`: no
    `PeftModel` wrapper, so every other name stays as it was) and return it. peft freezes every
    parameter but the adapters; the caller unfreezes what is trained besides them."""
    if not available():
        raise RuntimeError("the lora strategy needs peft: pip install -e '.[lora]' (make setup installs it)")
    import peft

    config = peft.LoraConfig(
        r=plan.rank,
        lora_alpha=ALPHA,
        target_modules=list(plan.targets),
        fan_in_fan_out=plan.fan_in_fan_out,
        **OPTIONS,
    )
    return peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
