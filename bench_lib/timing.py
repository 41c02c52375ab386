"""The round loop: warm-up, fixed work per round, and interleaving of the variants compared.

Variants of one case (e.g. the grad modes of one model, device and batch size) are measured
round-robin in one process: round r times every variant once, starting from variant r mod n, so
slow drift of the machine's speed hits every variant alike and ratios between them stay true.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

from bench_lib.devices import Device
from bench_lib.stats import Samples

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


def measure_interleaved(
    variants: Sequence[Variant],
    device: Device,
    *,
    rounds: int,
    warmup_rounds: int,
    iterations: int,
) -> Interleaved:
    """Time `variants` round-robin: `warmup_rounds` untimed rounds, then `rounds` timed ones.

    A variant that raises (out of memory, say) is dropped from the remaining rounds, the device's
    cached memory is released, and the exception is reported in `errors`; the others go on.
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
                try:
                    with variant.context():
                        timed = device.time_round(variant.fn, iterations)
                except Exception as exc:  # noqa: BLE001 - recorded per variant, the run goes on
                    result.errors[variant.name] = exc
                    device.release_memory()
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
