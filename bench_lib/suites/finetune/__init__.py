"""The fine-tuning suite: training steps with frozen blocks (`full`, `frozen_<k>`,
`frozen_nograd`) under each optimizer, and with activation checkpointing (`checkpoint`,
`frozen_<k>+checkpoint`) and LoRA adapters (`lora`) under one (`one_optimizer`: AdamW), with
step-time ratios to `full` of the same optimizer. The measuring is in
`bench_lib.suites.finetune.measure`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from bench_lib.records.cases import FINETUNE, Case, finetune_cases
from bench_lib.suites import Section, Suite, register

if TYPE_CHECKING:
    from bench_lib.measure.devices import Device
    from bench_lib.records.results import CaseResult
    from bench_lib.session import RunConfig

FULL = "full"  # the reference strategy of each optimizer
CHECKPOINT = "checkpoint"
LORA = "lora"
# checkpoint, frozen_<k>+checkpoint and lora run with one optimizer (see `one_optimizer`)
ONE_OPTIMIZER = (CHECKPOINT, LORA)
TEXT = (
    "Median time of one training step (ms), ratio to full (x, interleaved), memory by category; "
    "total = params + grads + opt state + activations; saving against full. Frozen blocks run in "
    "eval(): their BatchNorm statistics and dropout are frozen with their weights. checkpoint: full "
    "training, each block's activations recomputed in backward (only its inputs kept); lora: LoRA "
    "adapters (peft; rank and targets in the lora_rank and lora_targets columns) on a frozen base, "
    "head trained, whole model in train()."
)


class FinetuneSuite(Suite):
    name = FINETUNE
    order = 2
    ratio_column = "latency_ratio_to_full"

    def cases(self, config: RunConfig) -> list[Case]:
        from bench_lib.models import get_model
        from bench_lib.suites.finetune.measure import strategy_names

        combined = config.profile.checkpoint_frozen
        strategies_of = {get_model(m).name: strategy_names(get_model(m), combined) for m in config.models}
        cases = finetune_cases(
            config.profile,
            config.model_names,
            config.devices,
            config.optimizers,
            strategies_of,
            config.dtypes,
        )
        one = one_optimizer(config.optimizers)
        return [c for c in cases if c.optimizer == one or not c.strategy.endswith(ONE_OPTIMIZER)]

    def measure(
        self, group: Case, cases: Sequence[Case], request: Mapping[str, Any], device: Device
    ) -> dict[Case, CaseResult]:
        from bench_lib.measure.worker import model_spec, profile_of
        from bench_lib.suites.finetune.measure import measure_finetune_group

        results = measure_finetune_group(
            model_spec(request), device, group.batch_size, profile_of(request),
            [c.variant for c in cases], dtype=group.dtype, memory=request.get("memory", True),
            checks=request.get("checks", True),
        )  # fmt: skip
        return {r.case: r for r in results.values()}

    def add_ratios(self, results: Mapping[Case, CaseResult], run_sd: float = 0.0) -> dict[Case, CaseResult]:
        """Each optimizer's strategies against its own `full` step, per process as a ratio of
        trimmed means (see `stats.paired_ratio`: training steps that run at two speeds)."""
        from bench_lib.records.results import with_ratios
        from bench_lib.records.stats import trimmed_mean

        out: dict[Case, CaseResult] = {}
        for optimizer in dict.fromkeys(c.optimizer for c in results):
            subset = {c: r for c, r in results.items() if c.optimizer == optimizer}
            reference = next((c for c in subset if c.strategy == FULL), None)
            out |= with_ratios(subset, reference, "latency_ratio_to_full", trimmed_mean, run_sd)
        return {c: out[c] for c in results}

    def report_sections(self, frame: pd.DataFrame) -> list[Section]:
        from bench_lib.analysis.report import finetune_view

        return [("Fine-tuning", TEXT, finetune_view(frame))]


def one_optimizer(optimizers: Sequence[str]) -> str:
    """The optimizer `checkpoint` and `lora` run with: AdamW where the run has it (the usual
    fine-tuning choice, and where LoRA's saving in optimizer state is largest), else the first.
    One is enough: checkpointing changes the forward and backward, not the optimizer step, and
    each more variant costs a training step per round in every process (the default run's
    time)."""
    return "adamw" if "adamw" in optimizers else optimizers[0]


register(FinetuneSuite())
