"""Worker processes forked from one server get their own memory layout (`allocator.shuffle_layout`)."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from bench_lib.measure.allocator import pin_glibc_malloc, shuffle_layout

pytestmark = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)


def _address(shuffle: bool, pin: bool, queue: multiprocessing.Queue) -> None:
    if pin:  # as the workers do: blocks come from the heap (else malloc maps 4 MB on its own)
        pin_glibc_malloc()
    keep = shuffle_layout() if shuffle else None
    weights = torch.empty(1000, 1000)
    queue.put((weights.data_ptr(), keep is not None))


def _addresses(shuffle: bool, pin: bool, n: int = 4) -> set[int]:
    ctx = multiprocessing.get_context("fork")
    torch.empty(1)  # the allocator's state is set up in the parent, as in the forkserver
    queue = ctx.Queue()
    out = set()
    for _ in range(n):
        child = ctx.Process(target=_address, args=(shuffle, pin, queue))
        child.start()
        out.add(queue.get(timeout=60)[0])
        child.join()
    return out


@pytest.mark.parametrize("pin", [True, False], ids=["pinned-malloc", "default-malloc"])
def test_forked_children_share_addresses_without_the_shuffle(pin: bool) -> None:
    # the premise: a forked child allocates where its siblings did
    assert len(_addresses(shuffle=False, pin=pin)) == 1


def test_forked_children_get_their_own_addresses_with_it() -> None:
    assert len(_addresses(shuffle=True, pin=True)) == 4


def test_they_mostly_do_with_the_default_malloc_too() -> None:
    # a 4 MB block is mapped on its own, page-aligned, in the first gap that fits: the random
    # mapping moves it unless a gap above it fits (seen in about 1 of 6 children)
    assert len(_addresses(shuffle=True, pin=False, n=6)) >= 3


def test_the_shuffle_is_small() -> None:
    blocks = shuffle_layout()
    tensors = [b for b in blocks if isinstance(b, torch.Tensor)]
    assert 1 <= len(tensors) <= 8
    assert sum(t.numel() for t in tensors) < 4 << 20
