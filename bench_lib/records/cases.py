"""`Case`, the frozen identity of a measurement, and the profiles that expand into cases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from bench_lib.errors import UserError

INFERENCE = "inference"
FINETUNE = "finetune"
RULER = "ruler"
# The grad modes of an inference case, in report order; `grad` is the reference the ratios use.
# (bench_lib.measure.modes maps each to its torch context manager.)
MODE_NAMES = ("grad", "no_grad", "inference_mode")
REFERENCE_MODE = "grad"

# The columns that identify a case across runs and machines (the join key of reports).
KEY_FIELDS = ("suite", "model", "device", "mode", "batch_size", "dtype", "strategy", "optimizer", "compile")
COMPILED = "inductor"  # the `compile` of a torch.compile'd case; "" is eager
COMPILE_SUFFIX = "+compile"  # how a compiled inference variant is named within its group


@dataclass(frozen=True, order=True)
class Case:
    """What is measured, independent of how it turned out.

    `device` is the device kind ("cpu", "cuda"); `mode` the grad mode of an inference case;
    `strategy` and `optimizer` belong to fine-tuning cases and are "" elsewhere.
    """

    suite: str
    model: str
    device: str
    mode: str = ""
    batch_size: int = 1
    dtype: str = "float32"
    strategy: str = ""
    optimizer: str = ""
    compile: str = ""

    @property
    def key(self) -> tuple[str | int, ...]:
        return tuple(getattr(self, f) for f in KEY_FIELDS)

    @property
    def group(self) -> Case:
        """The interleaving group: the cases that differ only in mode, strategy or optimizer are
        measured together, round-robin, in the same processes."""
        return replace(self, mode="", strategy="", optimizer="", compile="")

    @property
    def label(self) -> str:
        """`<suite>-<id>`, e.g. `inference-mlp-cpu-b32-grad`: what gate rules match."""
        return f"{self.suite}-{self.id}"

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> Case:
        """The case of a report row (or any mapping with the key columns)."""
        values = {k: ("" if _blank(row[k]) else row[k]) for k in KEY_FIELDS}
        values["batch_size"] = int(values["batch_size"])  # type: ignore[call-overload]
        return cls(**{k: (str(v) if k != "batch_size" else v) for k, v in values.items()})  # type: ignore[arg-type]

    @property
    def variant(self) -> str:
        """The case's name within its group: its mode (`+compile` when compiled), or
        `<optimizer>/<strategy>`."""
        if self.mode:
            return self.mode + (COMPILE_SUFFIX if self.compile else "")
        return f"{self.optimizer}/{self.strategy}"

    def with_variant(self, variant: str) -> Case:
        """The case of this one's group named `variant` (the inverse of `variant`)."""
        if self.suite == FINETUNE:
            optimizer, strategy = variant.split("/")
            return replace(self.group, optimizer=optimizer, strategy=strategy)
        mode = variant.removesuffix(COMPILE_SUFFIX)
        return replace(self.group, mode=mode, compile=COMPILED if mode != variant else "")

    @property
    def id(self) -> str:
        parts = [self.model, self.device, f"b{self.batch_size}"]
        if self.dtype != "float32":
            parts.append(self.dtype)
        parts += [p for p in (self.optimizer, self.strategy, self.mode) if p]
        if self.compile:
            parts.append("compiled")
        return "-".join(parts)


def _blank(value: object) -> bool:
    """None, NaN or pandas' NA (whose comparisons raise TypeError)."""
    try:
        return value is None or bool(value != value)
    except TypeError:
        return True


@dataclass(frozen=True)
class Profile:
    """How much to measure: which batch sizes, how many worker processes per group, and how many
    rounds each process measures (after its warm-up rounds).

    Calls per round: `iterations` fixes them for every case when set (the tiny test profile uses
    1, so that it runs in seconds); otherwise each group calibrates them in its first process
    (`timing.calibrate_iterations`), from the model's own calls-per-round upwards, so that a
    round lasts at least `min_round_s`, and its other processes reuse that figure.
    """

    name: str
    batch_sizes: tuple[int, ...]
    rounds: int
    warmup_rounds: int
    processes: int = 1
    finetune_rounds: int = 25
    finetune_warmup_rounds: int = 5
    iterations: int | None = None
    description: str = ""
    models: tuple[str, ...] = ()  # the models a run measures when none are named; () = the zoo
    energy_seconds: float = 1.0  # per case, where NVML measures GPU energy (0: no energy phase)
    min_round_s: float = 0.001  # shortest round when calibrating calls per round (0: no calibration)
    # Adaptive effort (`measure.runner.Effort`): from `processes` up to `max_processes` worker
    # processes per group (0: exactly `processes`), until every ratio interval of the group is
    # within +-`ci_target` (relative half-width) or `group_budget_s` is spent (0: no budget)
    max_processes: int = 0
    ci_target: float = 0.01
    group_budget_s: float = 0.0
    # The spread of a ratio between runs minutes apart beyond the run's own processes (sd of its
    # log), added to every ratio interval (`stats.with_run_spread`), per suite: `ci_run_sd` for
    # every suite not named in `ci_run_sd_suites` ((suite, value) pairs). On this project's
    # 2-vCPU machine `bench_lib precision` estimated inference 0.57% and 0.62%, fine-tuning 0.73%
    # and 0.92% from two sets of five default runs (README "How precise are the figures"): 0.8%
    # and 1.2% cover them with room. It estimates yours from repeat runs (0: the run's own
    # processes only)
    ci_run_sd: float = 0.012
    ci_run_sd_suites: tuple[tuple[str, float], ...] = ((INFERENCE, 0.008),)
    # After a group's first process, later ones time about this many seconds of rounds (never
    # fewer than `min_rounds`): see `measure.runner.with_rounds` (0: always the full rounds)
    process_timing_s: float = 0.0
    min_rounds: int = 5
    checkpoint_frozen: bool = False  # fine-tuning also runs frozen_<k>+checkpoint (one more variant)

    def run_sd(self, suite: str) -> float:
        """The `ci_run_sd` that `suite`'s ratio intervals are widened by."""
        return dict(self.ci_run_sd_suites).get(suite, self.ci_run_sd)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "tiny", (1, 4), rounds=5, warmup_rounds=1, processes=1, finetune_rounds=3, finetune_warmup_rounds=1,
            iterations=1, energy_seconds=0.2,
            description="seconds; for the end-to-end tests, figures not meaningful",
        ),
        Profile(
            "default", (1, 32), rounds=30, warmup_rounds=5, processes=4, finetune_rounds=10,
            finetune_warmup_rounds=3, max_processes=15, ci_target=0.01, group_budget_s=9,
            process_timing_s=1.5,
            description="the default make bench: 4 to 15 processes x 30 rounds (10 training steps) per group, "
            "until every ratio is known to +-1% or 9 s are spent",
        ),
        Profile(
            "full", (1, 32, 128), rounds=200, warmup_rounds=20, processes=5, finetune_rounds=100,
            finetune_warmup_rounds=10, checkpoint_frozen=True,
            description="adds batch 128; 5 processes x 200 rounds (steadier p99)",
        ),
        Profile(
            "gpu", (32,), rounds=50, warmup_rounds=5, processes=1, finetune_rounds=15, finetune_warmup_rounds=3,
            energy_seconds=0.5, min_round_s=0.002, models=("mlp", "cnn", "transformer"),
            description="make gpu-check (minutes on one GPU): 3 models at batch 32, 1 process x 50 rounds "
            "of >= 2 ms, 0.5 s energy phases",
        ),
        Profile(
            "hf", (1,), rounds=10, warmup_rounds=2, processes=1, finetune_rounds=3, finetune_warmup_rounds=1,
            models=("bert-base", "gpt2"),
            description="BERT-base and GPT-2 small from Hugging Face configs (the hf extra), 1 process",
        ),
    )
}  # fmt: skip


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UserError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})") from None


def inference_cases(
    profile: Profile,
    models: Sequence[str],
    devices: Sequence[str],
    modes: Sequence[str],
    dtypes: Sequence[str] = ("float32",),
    compile: bool = False,
) -> list[Case]:
    """Every inference case of the profile, grouped so the modes of a group are adjacent (and
    batch sizes ascending, so that one that runs out of memory stops the larger ones). With
    `compile`, each mode also runs `torch.compile`d, in the same group as the eager modes."""
    return [
        Case(INFERENCE, model, device, mode, batch_size, dtype, compile=compiled)
        for model in models
        for device in devices
        for dtype in dtypes
        for batch_size in profile.batch_sizes
        for compiled in (("", COMPILED) if compile else ("",))
        for mode in modes
    ]


def finetune_cases(
    profile: Profile,
    models: Sequence[str],
    devices: Sequence[str],
    optimizers: Sequence[str],
    strategies_of: Mapping[str, Sequence[str]],
    dtypes: Sequence[str] = ("float32",),
) -> list[Case]:
    """Every fine-tuning case: models without strategies (no blocks) are left out."""
    return [
        Case(FINETUNE, model, device, "", batch_size, dtype, strategy=strategy, optimizer=optimizer)
        for model in models
        for device in devices
        for dtype in dtypes
        for batch_size in profile.batch_sizes
        for optimizer in optimizers
        for strategy in strategies_of.get(model, ())
    ]


def ruler_cases(devices: Sequence[str], rulers: Sequence[str]) -> list[Case]:
    """The calibration ruler of every device (see `bench_lib.suites.ruler.measure`)."""
    return [Case(RULER, "ruler", device, ruler, 1) for device in devices for ruler in rulers]


def parse_list(text: str | None, known: Sequence[str], what: str) -> list[str]:
    """Parse a comma-separated selection; empty means all of `known`. Unknown names raise."""
    if not text or not text.strip():
        return list(known)
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in known:
            raise UserError(f"unknown {what} {name!r} (known: {', '.join(known)})")
    return list(dict.fromkeys(names))
