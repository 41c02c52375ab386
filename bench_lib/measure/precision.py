"""The precision axis: fp32, TF32, or autocast to bf16 / fp16 (the `dtype` column of the case key).

Autocast is how users run mixed precision: parameters stay fp32, eligible ops (matmuls,
convolutions) run in the lower precision. Training steps in float16 use a `GradScaler`, as
users must (bf16 needs none). Support is probed, not assumed: a combination that cannot run
here is skipped with the reason.

TF32 is a mode of float32 on NVIDIA GPUs since Ampere: torch runs float32 matmuls in TF32 when
`torch.get_float32_matmul_precision()` is not "highest", and float32 convolutions whenever
`torch.backends.cudnn.allow_tf32` is on, which it is by default. A group therefore runs under
`float32_mode`: a `tf32` case turns TF32 on for both, every other case off (so "float32" means
IEEE float32), and each row records the settings it ran under (`float32_settings`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from functools import cache
from typing import Any

import torch

from bench_lib.errors import UserError

FLOAT32 = "float32"
TF32 = "tf32"
DTYPES: dict[str, torch.dtype] = {
    FLOAT32: torch.float32,
    TF32: torch.float32,  # float32 tensors; matmuls and convolutions in TF32
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def parse_dtypes(text: str | None) -> list[str]:
    """A comma-separated dtype list ("float32,bfloat16"; also fp32, tf32, bf16, fp16); empty: float32."""
    aliases = {"fp32": FLOAT32, "tfloat32": TF32, "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
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
    """A factory of the autocast context a case of this device kind and dtype runs in (none for
    float32 and tf32: see `float32_mode`)."""
    if dtype in (FLOAT32, TF32):
        return nullcontext
    return lambda: torch.autocast(device_type=kind, dtype=DTYPES[dtype])


def each_call(
    factory: Callable[[], AbstractContextManager[object]], fn: Callable[[], object]
) -> Callable[[], object]:
    """`fn`, entering `factory()`'s context on every call (`fn` itself where that is no context).

    Autocast's region must be one call's: inside one region autocast keeps the lower-precision
    copies of the weights it cast (its cache) for the region's later calls, except under
    `inference_mode`, where torch turns that cache off. One region over a round of calls would
    make a mode's figure depend on the calls per round and charge inference_mode alone for the
    casts (on an H200, the MLP's bf16 inference_mode round was 1.28x grad mode's, no_grad's 0.90x).
    """
    if factory is nullcontext:
        return fn

    def called() -> object:
        with factory():
            return fn()

    return called


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


def unsupported_reason(kind: str, dtype: str, cuda: Any = None) -> str | None:
    """Why `dtype` cannot run on this device kind here, or None."""
    if dtype == FLOAT32:
        return None
    if kind == "cpu" and dtype == "float16":
        return "float16 autocast is measured on CUDA only (on the CPU, use bfloat16)"
    if kind == "cpu" and dtype == TF32:
        return "TF32 is a mode of NVIDIA GPUs (Ampere and newer): measured on CUDA only"
    if kind == "cuda":
        cuda = cuda if cuda is not None else torch.cuda
        if not cuda.is_available():
            return None  # the device itself is unavailable: said elsewhere
        if dtype == "bfloat16" and not cuda.is_bf16_supported():
            return "this GPU does not support bfloat16"
        if dtype == TF32:
            major, minor = cuda.get_device_capability(0)
            if major < 8:
                return f"this GPU has no TF32 (compute capability {major}.{minor}; TF32 needs 8.0 or newer)"
        return None
    return _cpu_bf16_problem()


def float32_settings() -> dict[str, Any]:
    """How float32 matmuls and convolutions run now: the columns every report row records.

    `cuda_matmul_tf32` is what cuBLAS does, which TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 (set in some
    NVIDIA containers) turns on whatever the precision says.
    """
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
    }


def describe_float32(settings: dict[str, Any]) -> str:
    """One line for the fingerprint, e.g. "matmul highest, cuBLAS TF32 off, cuDNN TF32 on"."""
    on = {True: "on", False: "off"}
    return (
        f"matmul {settings['float32_matmul_precision']}, cuBLAS TF32 {on[bool(settings['cuda_matmul_tf32'])]}, "
        f"cuDNN TF32 {on[bool(settings['cudnn_tf32'])]}"
    )


@contextmanager
def float32_mode(dtype: str) -> Iterator[None]:
    """TF32 matmuls and convolutions for a `tf32` case, IEEE float32 for every other, restored
    after the block."""
    precision, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if dtype == TF32 else "highest")
    torch.backends.cudnn.allow_tf32 = dtype == TF32
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn


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
