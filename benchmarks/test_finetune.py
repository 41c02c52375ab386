"""Fine-tuning steps with frozen layers: `full`, `frozen_<k>` (requires_grad_(False)) and
`frozen_nograd` (the frozen trunk under torch.no_grad()), with SGD-momentum and AdamW.

The strategies and optimizers of one model, device and batch size are measured together,
interleaved round by round, in the profile's worker processes; each test reports its own case.
"""


def test_finetune(bench_measure, finetune_case):
    bench_measure(finetune_case)
