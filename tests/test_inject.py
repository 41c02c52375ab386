"""Deliberate regressions for the gate audit: exact extra bytes, parsed options."""

import time

import pytest
import torch
from torch import nn

from bench_lib.errors import UserError
from bench_lib.measure.devices import CpuDevice
from bench_lib.measure.inject import Injection, inject, injected_spec, parse_injection
from bench_lib.models import ZOO
from bench_lib.records.cases import Profile
from bench_lib.suites.inference.measure import measure_inference_group

TINY = Profile("t", (2,), rounds=3, warmup_rounds=1, iterations=1)


def peak(spec):
    return measure_inference_group(spec, CpuDevice(), 2, TINY, ["grad", "no_grad"])


def test_injected_memory_adds_exactly_its_bytes_to_the_peak():
    plain, injected = peak(ZOO["mlp"]), peak(injected_spec(ZOO["mlp"], Injection("mlp", mem_bytes=4096)))
    for mode in ("grad", "no_grad"):
        assert injected[mode].metrics["mem_peak_bytes"] == plain[mode].metrics["mem_peak_bytes"] + 4096
        assert injected[mode].ok  # outputs unchanged, semantics intact


def test_injection_only_touches_the_named_model():
    assert injected_spec(ZOO["cnn"], Injection("mlp", slow=0.5)) is ZOO["cnn"]


def test_injected_slowdown_spins_for_the_fraction_of_the_forward():
    class Sleepy(nn.Module):
        def forward(self, x):
            time.sleep(0.02)
            return x

    module = inject(Sleepy(), Injection("sleepy", slow=1.0))
    start = time.perf_counter()
    module(torch.ones(1))
    assert time.perf_counter() - start >= 0.04  # 20 ms of forward, then at least as much again


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mlp:slow=0.25", Injection("mlp", 0.25, 0)),
        ("cnn:mem=4096,slow=0.1", Injection("cnn", 0.1, 4096)),
        ("", None),
    ],
)
def test_parse(text, expected):
    assert parse_injection(text) == expected


@pytest.mark.parametrize("text", ["mlp", "mlp:fast=2", "mlp:slow=x", ":slow=1", "mlp:mem=-5"])
def test_parse_rejects(text):
    with pytest.raises(UserError, match="inject"):
        parse_injection(text)
