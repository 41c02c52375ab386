"""Worker processes forked from one server get their own memory layout (`allocator.shuffle_layout`).

The children are started as the suite starts its workers (`runner._context("forkserver")`), and
allocate as a group does: malloc pinned, then a model and its input, then a 4 MB block.
"""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from bench_lib.measure.allocator import pin_glibc_malloc, shuffle_layout
from bench_lib.measure.runner import _context

pytestmark = pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="needs the forkserver start method"
)


def _addresses_in_child(shuffle: bool, queue: multiprocessing.Queue) -> None:
    from bench_lib.models import get_model

    pin_glibc_malloc()
    keep = shuffle_layout() if shuffle else None
    instance = get_model("mlp").instantiate(32)
    weights = next(instance.model.parameters())
    block = torch.empty(1000, 1000)
    queue.put((weights.data_ptr(), instance.input_tuple()[0].data_ptr(), block.data_ptr(), keep is not None))


def _addresses(shuffle: bool, n: int = 5) -> list[tuple[int, int, int]]:
    ctx = _context("forkserver")
    queue = ctx.Queue()
    out = []
    for _ in range(n):
        child = ctx.Process(target=_addresses_in_child, args=(shuffle, queue))
        child.start()
        out.append(queue.get(timeout=120)[:3])
        child.join()
    return out


def test_workers_allocate_at_their_siblings_addresses_without_the_shuffle() -> None:
    # the premise: every worker of a run would put a group's weights and input where the others did
    # (the first child may differ: the server's first fork warms something up)
    assert len(set(_addresses(shuffle=False)[1:])) == 1


def test_with_it_each_worker_has_its_own() -> None:
    found = _addresses(shuffle=True)
    assert len(set(found)) == len(found)
    assert len({weights for weights, _, _ in found}) >= len(found) - 1  # each figure moves too
    assert len({block for _, _, block in found}) >= len(found) - 1


def test_the_shuffle_costs_little() -> None:
    blocks = shuffle_layout()
    tensors = [b for b in blocks if isinstance(b, torch.Tensor)]
    assert 16 <= len(tensors) <= 48 + 128
    assert sum(t.numel() for t in tensors) <= 48 * (8 << 20) + 128 * 1024
