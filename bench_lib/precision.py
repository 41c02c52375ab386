"""The precision axis: fp32, or autocast to bf16 / fp16 (the `dtype` column of the case key).

Autocast is how users run mixed precision: parameters stay fp32, eligible ops (matmuls,
convolutions) run in the lower precision. Training steps in float16 use a `GradScaler`, as
users must (bf16 needs none). Support is probed, not assumed: a combination that cannot run
here is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from functools import cache
from typing import Any

import torch

from bench_lib.errors import UserError

FLOAT32 = "float32"
DTYPES: dict[str, torch.dtype] = {
    FLOAT32: torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def parse_dtypes(text: str | None) -> list[str]:
    """A comma-separated dtype list ("float32,bfloat16"; also fp32, bf16, fp16); empty: float32."""
    aliases = {"fp32": FLOAT32, "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    if not text or not text.strip():
        return [FLOAT32]
    names = []
    for part in filter(None, (p.strip().lower() for p in text.split(","))):
        name = aliases.get(part, part)
        if name not in DTYPES:
            raise UserError(f"unknown dtype {part!r} (known: {', '.join(DTYPES)})")
        names.append(name)
    return list(dict.fromkeys(names))


def autocast(kind: str, dtype: str) -> Callable[[], AbstractContextManager[object]]:
    """A factory of the context a case of this device kind and dtype runs in."""
    if dtype == FLOAT32:
        return nullcontext
    return lambda: torch.autocast(device_type=kind, dtype=DTYPES[dtype])


def within(
    *factories: Callable[[], AbstractContextManager[object]],
) -> Callable[[], AbstractContextManager[object]]:
    """One context factory entering each of `factories`' contexts, in order."""

    @contextmanager
    def combined() -> Iterator[None]:
        with ExitStack() as stack:
            for factory in factories:
                stack.enter_context(factory())
            yield

    return combined


def unsupported_reason(kind: str, dtype: str, cuda: Any | None = None) -> str | None:
    """Why `dtype` cannot run on this device kind here, or None."""
    if dtype == FLOAT32:
        return None
    if kind == "cpu" and dtype == "float16":
        return "float16 autocast is measured on CUDA only (on the CPU, use bfloat16)"
    if kind == "cuda":
        cuda = cuda if cuda is not None else torch.cuda
        if dtype == "bfloat16" and cuda.is_available() and not cuda.is_bf16_supported():
            return "this GPU does not support bfloat16"
        return None
    return _cpu_bf16_problem()


@cache
def _cpu_bf16_problem() -> str | None:
    try:
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            out = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
    except Exception as exc:  # noqa: BLE001 - whatever the build says, it cannot run here
        return f"CPU bfloat16 autocast fails here: {exc}"
    if out.dtype != torch.bfloat16:
        return "CPU bfloat16 autocast is not applied by this torch build"
    return None


def grad_scaler(kind: str, dtype: str) -> torch.amp.GradScaler | None:
    """The loss scaler a float16 training step needs (None otherwise)."""
    return torch.amp.GradScaler(kind) if dtype == "float16" else None
