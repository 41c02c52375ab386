"""The round loop: warm-up, fixed work per round, and interleaving of the variants compared.

Variants of one case (e.g. the grad modes of one model, device and batch size) are measured
round-robin in one process: round r times every variant once, starting from variant r mod n, so
slow drift of the machine's speed hits every variant alike and ratios between them stay true.

Calls per round (`iterations`) are fixed for all rounds and variants of a group; where a profile
does not fix them, `calibrate_iterations` chooses them so that a round lasts at least a set time.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

from bench_lib.measure.devices import Device, RoundTime
from bench_lib.records.stats import Samples

__all__ = ["Interleaved", "Samples", "Variant", "gc_disabled", "measure_interleaved"]


@dataclass(frozen=True)
class Variant:
    """One thing to time: `fn` is called `iterations` times per round inside `context()`.

    The context is entered outside the timed region (its own cost is not the variant's).
    """

    name: str
    fn: Callable[[], object]
    context: Callable[[], AbstractContextManager[object]] = nullcontext


@dataclass
class Interleaved:
    """What `measure_interleaved` returns: samples of the variants that ran, errors of the others."""

    samples: dict[str, Samples] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)


@contextmanager
def gc_disabled() -> Iterator[None]:
    """Collect garbage, then keep the collector off so it cannot fire inside a timed round."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def without_traceback(exc: BaseException) -> BaseException:
    """`exc` with its traceback, and those of the exceptions chained to it, dropped.

    A traceback holds the frames of the failed call and so its locals (the activations a forward
    allocated before it ran out of memory): kept, they stay allocated for as long as the error is.
    """
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        pending += [e.__cause__, e.__context__]
    return exc


def _release(device: Device) -> None:
    """After a failure whose exception no longer holds its frames: free what they held (some may
    sit in reference cycles, and the collector is off during the rounds), then empty the cache."""
    gc.collect()
    device.release_memory()


def _run_round(variant: Variant, device: Device, iterations: int) -> RoundTime | BaseException:
    """One round of `variant` inside its context, or the exception it raised (traceback dropped).

    The exception is returned rather than handled here so that the caller acts on it outside the
    `except` block, where the interpreter no longer holds the traceback either.
    """
    try:
        with variant.context():
            return device.time_round(variant.fn, iterations)
    except Exception as exc:  # noqa: BLE001 - recorded per variant, the run goes on
        return without_traceback(exc)


def measure_interleaved(
    variants: Sequence[Variant],
    device: Device,
    *,
    rounds: int,
    warmup_rounds: int,
    iterations: int,
) -> Interleaved:
    """Time `variants` round-robin: `warmup_rounds` untimed rounds, then `rounds` timed ones.

    A variant that raises (out of memory, say) is dropped from the remaining rounds and its
    exception reported in `errors`, without its traceback; what the failed call allocated is then
    collected and the device's cached memory released, so the others can go on.
    `KeyboardInterrupt` propagates.
    """
    if rounds < 1 or warmup_rounds < 0 or iterations < 1:
        raise ValueError("need rounds >= 1, warmup_rounds >= 0 and iterations >= 1")
    result = Interleaved()
    active = list(variants)
    host: dict[str, list[float]] = {v.name: [] for v in variants}
    dev: dict[str, list[float]] = {v.name: [] for v in variants}
    with gc_disabled():
        for r in range(warmup_rounds + rounds):
            shift = r % len(active) if active else 0
            for variant in active[shift:] + active[:shift]:
                timed = _run_round(variant, device, iterations)
                if isinstance(timed, BaseException):
                    result.errors[variant.name] = timed
                    del timed
                    _release(device)
                    continue
                if r >= warmup_rounds:
                    host[variant.name].append(timed.host_s * 1e3 / iterations)
                    if timed.device_s is not None:
                        dev[variant.name].append(timed.device_s * 1e3 / iterations)
            active = [v for v in active if v.name not in result.errors]
    for v in active:
        result.samples[v.name] = Samples(
            iterations=iterations,
            host_ms=tuple(host[v.name]),
            device_ms=tuple(dev[v.name]) if dev[v.name] else None,
            warmup_rounds=warmup_rounds,
        )
    return result


def next_round_size(n: float) -> int:
    """The smallest value of the 1-2-5 series (1, 2, 5, 10, 20, ...) that is >= n."""
    if n <= 1:
        return 1
    decade = 10 ** math.floor(math.log10(n))
    return next(int(m * decade) for m in (1, 2, 5, 10) if m * decade >= n * (1 - 1e-12))


def calibrate_iterations(
    variants: Sequence[Variant],
    device: Device,
    min_round_s: float,
    start: int = 1,
    limit: int = 1_000_000,
    warmup: bool = True,
) -> int:
    """The calls per round that make every variant's round last at least `min_round_s`.

    Like the autorange of `torch.utils.benchmark` and `timeit`: per-round costs (reading the clock;
    on CUDA, recording the events and the launch gap before the first kernel, when the device
    idles) must be negligible beside the round, which for a small model on a fast GPU means many
    calls. After one untimed round of each variant (`warmup`; callers that already ran every
    variant skip it), rounds of n calls are timed (device time where
    there is one) and n grows to the value of the 1-2-5 series, at least `start`, that the
    shortest variant's round says is enough, until a timed round confirms it; the series makes
    reruns tend to pick the same n. A variant that raises is left out (`measure_interleaved`
    will record its error).

    Returns `start` when `min_round_s` is 0 or less.
    """
    if start < 1:
        raise ValueError("start must be >= 1")
    if min_round_s <= 0:
        return start
    active, n = list(variants), start
    with gc_disabled():
        for untimed in (warmup, False, False, False, False, False, False, False):
            shortest = math.inf
            for variant in list(active):
                timed = _run_round(variant, device, n)
                if isinstance(timed, BaseException):
                    active.remove(variant)
                    del timed
                    _release(device)
                    continue
                shortest = min(shortest, timed.primary_s)
            if untimed:
                continue
            if not active or shortest >= min_round_s or n >= limit:
                return n
            wanted = n * min_round_s / shortest if shortest > 0 else n * 10
            n = min(limit, max(next_round_size(wanted), next_round_size(n + 1)))
    return n
