"""Pin glibc malloc's thresholds so CPU latencies do not depend on the process's history.

glibc serves large blocks with mmap and raises its mmap threshold dynamically as blocks are
freed, so whether a model's activations are page-faulted afresh on every call depends on what
the process allocated before. Measured here (SmallResNet, batch 32, 1 thread): the same no_grad
forward took 6.6 ms or 14.5 ms in one process depending on earlier allocations, and grad mode
10-12 ms with the default thresholds against 6.9 ms with pinned ones. Fixed thresholds (which
also turn the dynamic adjustment off) make the figures reproducible. PyTorch's tuning guide
recommends jemalloc or tcmalloc for the same reason.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import random

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 30
TRIM_THRESHOLD_BYTES = 1 << 30


def pin_glibc_malloc() -> str:
    """Set fixed mmap and trim thresholds when the C library is glibc; describe what was done.

    The description goes into every report row (`cpu_malloc`), so runs with and without it are
    never mistaken for each other.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present only in glibc
    except (OSError, AttributeError, TypeError):
        return "default (not glibc)"
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    if not ok:
        return "default (mallopt refused)"
    return f"glibc mmap_threshold={MMAP_THRESHOLD_BYTES} trim_threshold={TRIM_THRESHOLD_BYTES}"


def shuffle_layout(rng: random.Random | None = None) -> list[object]:
    """Move what this process allocates next to addresses of its own: keep the returned blocks
    alive while measuring.

    Workers fork from one server (`runner._context`), so without this each would place a group's
    weights and activations at the same addresses as its siblings: figures that depend on
    alignment and cache-set conflicts would then agree within a run and differ between runs (whose
    servers start from different layouts), and the interval from the spread between a run's
    processes would be too narrow. A random number of blocks, of sizes log-uniform from 64 B to
    8 MiB and small ones for malloc's small bins, taken first through torch's own allocator (the C
    heap, 64-byte aligned like a tensor's data), some small objects of Python's allocator, and an
    anonymous mapping of a random number of pages (for blocks malloc maps on their own) give
    every worker its own offsets, as separate interpreters have: a later block may come from a
    chunk the server freed (malloc takes the best fit), so the pads must split chunks of every
    scale. Costs a few milliseconds and tens of MiB of address space on average, almost none of
    it touched (resident memory: about a page per block; the memory figures are differences
    taken later and do not see it).
    """
    rng = rng or random.SystemRandom()
    import torch

    # sizes log-uniform from 64 B to 8 MiB: a later block of any size may come from a free chunk
    # the server left (malloc takes the best fit), so pads of every scale split those at random
    sizes = [64 * int(2 ** rng.uniform(0, 17)) for _ in range(rng.randrange(16, 49))]
    sizes += [rng.randrange(1, 1025) for _ in range(rng.randrange(0, 129))]  # the small bins too
    rng.shuffle(sizes)
    blocks: list[object] = [torch.empty(size, dtype=torch.uint8) for size in sizes]
    blocks.append([bytes(rng.randrange(1, 512)) for _ in range(rng.randrange(0, 4096))])
    # blocks above malloc's mmap threshold (unpinned malloc) are mapped below the last mapping
    blocks.append(mmap.mmap(-1, rng.randrange(1, 512) * mmap.PAGESIZE))
    return blocks
