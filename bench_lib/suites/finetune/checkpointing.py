"""Activation checkpointing of trunk blocks for the `checkpoint` fine-tuning strategies.

Each block's forward runs inside `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`:
autograd keeps the block's inputs only, and the backward runs the block's forward again to get
what it needs. The block stays where it is (its `forward` is replaced on the instance, so
parameter names, hooks and the model's own forward are untouched), and the checkpoint keeps
PyTorch's defaults otherwise (the RNG state is saved and restored, so dropout draws the same
masks in the recomputation).

One pitfall is handled here: a block's forward run again in backward would update BatchNorm's
running statistics a second time (momentum applied twice per step). The recomputation restores
the block's buffers to what they were before it, so a checkpointed step leaves the same
statistics as a plain one (the `checkpoint_mismatch` check compares them with `full`'s).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextmanager
def keep_buffers(module: nn.Module) -> Iterator[None]:
    """Leave `module`'s buffers (BatchNorm running statistics) as they were before the block."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def recompute_context(
    module: nn.Module,
) -> Callable[[], tuple[AbstractContextManager, AbstractContextManager]]:
    """`context_fn` of `checkpoint`: nothing around the forward, `keep_buffers` around the
    recomputation (blocks without buffers: nothing either)."""
    has_buffers = any(True for _ in module.buffers())
    return lambda: (nullcontext(), keep_buffers(module) if has_buffers else nullcontext())


def _checkpointed(module: nn.Module, forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, context_fn=recompute_context(module), **kwargs)


def checkpoint_blocks(blocks: Sequence[nn.Module]) -> None:
    """Run each block's forward under activation checkpointing from now on."""
    for block in blocks:
        block.forward = partial(_checkpointed, block, block.forward)
