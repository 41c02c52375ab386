"""The calibration ruler of each device: a fixed matmul, a memory-bound copy and a loop of tiny
ops, recorded in every run so that a comparison shows how much the machine itself moved."""


def test_ruler(bench_measure, ruler_case):
    bench_measure(ruler_case)
