"""Inference under grad, no_grad and inference_mode, for every zoo model, device and batch size.

Parametrized by the root conftest.py from the profile (`--bench-profile`, `BENCH_PROFILE`).
The modes of one model, device and batch size are measured together, interleaved round by round,
when the first of them runs; each test then reports its own mode.
"""


def test_inference(bench_measure, inference_case):
    bench_measure(inference_case)
