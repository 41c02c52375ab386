"""Grad modes as context-manager factories, and the checks that each mode behaves as documented.

- `grad`: autograd on (`torch.enable_grad()`): the forward builds a graph and saves tensors.
- `no_grad`: `torch.no_grad()`: no graph, nothing saved; results can still enter autograd later.
- `inference_mode`: `torch.inference_mode()`: like no_grad, plus no version counters or view
  tracking; results are inference tensors that can never enter autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch.utils._pytree import tree_leaves

from bench_lib.errors import UserError
from bench_lib.records.cases import MODE_NAMES, REFERENCE_MODE

__all__ = ["MODES", "REFERENCE_MODE", "mode_context", "outputs_mismatch", "semantics_violation"]

MODES: dict[str, Callable[[], AbstractContextManager[object]]] = dict(
    zip(MODE_NAMES, (torch.enable_grad, torch.no_grad, torch.inference_mode), strict=True)
)


def mode_context(mode: str) -> Callable[[], AbstractContextManager[object]]:
    try:
        return MODES[mode]
    except KeyError:
        raise UserError(f"unknown mode {mode!r} (known: {', '.join(MODES)})") from None


def _tensors(output: object) -> list[torch.Tensor]:
    return [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]


def semantics_violation(
    mode: str, output: object, saved_bytes: int | None, has_trainable_params: bool
) -> str | None:
    """Why `output` (and the bytes saved for backward while computing it) break `mode`'s rules.

    Returns None when the mode behaved: under no_grad / inference_mode no output has a
    `grad_fn` and nothing was saved; inference_mode outputs are inference tensors; under grad a
    model with trainable parameters produced a graph and saved something for backward.
    `saved_bytes` None (not counted, as for compiled code) skips the checks on saved bytes.
    """
    tensors = _tensors(output)
    if not tensors:
        return f"{mode}: the model returned no tensor"
    if mode == REFERENCE_MODE:
        if has_trainable_params and not any(t.grad_fn is not None for t in tensors):
            return "grad: output has no grad_fn although the model has trainable parameters"
        if has_trainable_params and saved_bytes == 0:  # None: not counted
            return "grad: nothing was saved for backward although the model has trainable parameters"
        return None
    if any(t.grad_fn is not None for t in tensors):
        return f"{mode}: output has a grad_fn (autograd recorded a graph)"
    if saved_bytes:
        return f"{mode}: {saved_bytes} bytes were saved for backward (expected 0)"
    if mode == "inference_mode" and not all(t.is_inference() for t in tensors):
        return "inference_mode: output is not an inference tensor"
    return None


def outputs_mismatch(
    reference: object,
    output: object,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    reference_name: str = "grad mode",
) -> str | None:
    """Why `output` differs from `reference` (shapes or values beyond allclose), or None;
    `reference_name` says in the message where the reference came from."""
    ref, out = _tensors(reference), _tensors(output)
    if len(ref) != len(out):
        return f"output has {len(out)} tensors, expected {len(ref)}"
    for i, (a, b) in enumerate(zip(ref, out, strict=True)):
        if a.shape != b.shape:
            return f"output {i} has shape {tuple(b.shape)}, expected {tuple(a.shape)}"
        if not torch.allclose(a.detach(), b.detach(), rtol=rtol, atol=atol):
            diff = (a.detach().float() - b.detach().float()).abs().max().item()
            return f"output {i} differs from {reference_name}'s (max abs difference {diff:.3g})"
    return None
