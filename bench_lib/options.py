"""The one table of run options. The pytest options (`--bench-NAME`), the `run` command's
arguments, the environment variables and the options table of docs/options.md are all made from
it, and `RunConfig.parse` takes its values by `Option.field`. Importing it is cheap (no torch).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One run option. `name` is the pytest spelling without `--bench-`; `cli` the `run`
    command's flag (None: not on `run`); `cli_kind` how `run` takes it: "value", "repeat" (a
    repeatable flag whose values are comma-joined) or "switch" (a flag meaning "on")."""

    name: str
    default: str
    help: str
    cli: str | None = None
    cli_kind: str = "value"
    run_config: bool = True  # a `RunConfig.parse` keyword (else read by the pytest plugin itself)

    @property
    def env(self) -> str:
        return "BENCH_" + self.name.upper().replace("-", "_")

    @property
    def field(self) -> str:
        return self.name.replace("-", "_")

    @property
    def pytest_flag(self) -> str:
        return f"--bench-{self.name}"


OPTIONS: tuple[Option, ...] = (
    Option("profile", "default", "benchmark profile: tiny, default, full, gpu or hf", "--profile"),
    Option(
        "models",
        "",
        "models: zoo names (mlp, cnn, transformer, polynomial), bert-base/gpt2 (hf extra), FILE.py:FUNCTION or "
        "package.module:FUNCTION, comma-separated (default: the profile's, else the zoo plus "
        "[tool.bench_lib] models)",
        "--model",
        "repeat",
    ),
    Option("batch-sizes", "", "comma-separated batch sizes (default: the profile's)", "--batch-sizes"),
    Option(
        "devices",
        "auto",
        "comma-separated device kinds: cpu, cuda (auto: every kind this machine has)",
        "--devices",
    ),
    Option("modes", "", "comma-separated grad modes (default: grad, no_grad, inference_mode)", "--modes"),
    Option(
        "dtypes",
        "float32",
        "comma-separated precisions: float32, tf32 (CUDA), bfloat16, float16 (autocast; float16 on CUDA only)",
        "--dtypes",
    ),
    Option(
        "compile",
        "off",
        "on: every inference mode also runs torch.compile'd (compile time reported apart)",
        "--compile",
        "switch",
    ),
    Option(
        "optimizers", "", "comma-separated fine-tuning optimizers: sgd, adamw (default: both)", "--optimizers"
    ),
    Option(
        "processes",
        "",
        "worker processes per group: the first that adaptive effort runs, or exactly this many when "
        "given without --bench-max-processes (default: the profile's; 0 = in this process)",
        "--processes",
    ),
    Option(
        "max-processes",
        "",
        "adaptive effort: at most this many worker processes per group, added one at a time until "
        "the interval target (--bench-ci-target) is met or the group budget spent (0: no adaptation; default: the "
        "profile's, or [tool.bench_lib] max_processes)",
        "--max-processes",
    ),
    Option(
        "ci-target",
        "",
        "adaptive effort's target: every ratio's 95 percent confidence interval within +- this fraction "
        "of the ratio, e.g. 0.01 = +-1 percent (default: the profile's, or [tool.bench_lib] ci_target)",
        "--ci-target",
    ),
    Option(
        "group-budget",
        "",
        "adaptive effort's time budget per group, in seconds: no process is added that would end "
        "after it (0: none; default: the profile's, or [tool.bench_lib] group_budget_s)",
        "--group-budget",
    ),
    Option(
        "ci-run-sd",
        "",
        "the spread of a ratio between runs beyond a run's own processes (standard deviation of its "
        "log, e.g. 0.012 = 1.2 percent), added to every ratio interval: one number for every suite, or "
        "per suite (inference=0.008,finetune=0.012); `bench_lib precision` estimates it from repeat runs "
        "(0: the run's own processes only; default: the profile's, or [tool.bench_lib] ci_run_sd)",
        "--ci-run-sd",
    ),
    Option("threads", "1", "torch intra-op threads, or 'default' for torch's own choice", "--threads"),
    Option("results-dir", "results", "folder for the CSV reports", "--results-dir"),
    Option(
        "history",
        "on",
        "add the run to the results history: on (the configured store, else <results-dir>/history.sqlite), "
        "off, or a database path or postgresql:// URL",
        run_config=False,
    ),
    Option(
        "malloc",
        "pinned",
        "'pinned' fixes glibc malloc thresholds (reproducible CPU figures), 'default' leaves them",
        "--malloc",
    ),
    Option(
        "start-method",
        "forkserver",
        "how worker processes start: forkserver (fast) or spawn (fully independent, ~1.5 s each)",
        "--start-method",
    ),
    Option(
        "inject",
        "",
        "deliberate regression to test the gate: MODEL:slow=FRACTION and/or mem=BYTES",
        "--inject",
    ),
)
BY_NAME = {o.name: o for o in OPTIONS}


def from_environment(option: Option, environ: Mapping[str, str] | None = None) -> str:
    """The option's value from its environment variable, else its default."""
    return (os.environ if environ is None else environ).get(option.env, option.default)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options as arguments of `python -m bench_lib run` (defaults from the environment)."""
    for o in OPTIONS:
        if o.cli is None:
            continue
        text = f"{o.help} (env {o.env}; default {o.default!r})"
        if o.cli_kind == "switch":
            parser.add_argument(
                o.cli, dest=o.field, action="store_const", const="on", default=None, help=text
            )
        elif o.cli_kind == "repeat":
            parser.add_argument(
                o.cli, dest=o.field, action="append", default=None, help=text + "; repeatable"
            )
        else:
            parser.add_argument(o.cli, dest=o.field, default=None, help=text)


def run_values(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`RunConfig.parse` keywords from parsed `run` arguments: given ones, else the environment's,
    else the defaults."""
    values = {}
    for o in OPTIONS:
        if not o.run_config:
            continue
        given = getattr(args, o.field, None)
        if isinstance(given, list):
            given = ",".join(given)
        values[o.field] = given if given is not None else from_environment(o, environ)
    return values


def markdown_table() -> str:
    """The options table of docs/options.md."""
    lines = [
        "| pytest option | `run` argument | environment | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for o in OPTIONS:
        cli = f"`{o.cli}`" if o.cli else ""
        lines.append(f"| `{o.pytest_flag}` | {cli} | `{o.env}` | `{o.default!r}` | {o.help} |")
    return "\n".join(lines)


DOC_START, DOC_END = "<!-- options:start", "<!-- options:end -->"


def documented(text: str) -> str:
    """`text` (docs/options.md) with its options table regenerated from `OPTIONS`."""
    start, end = text.index(DOC_START), text.index(DOC_END)
    first_line_end = text.index("\n", start) + 1
    return text[:first_line_end] + markdown_table() + "\n" + text[end:]


def history_off(setting: object) -> bool:
    """Whether a `--bench-history` setting turns the results history off (read before anything of
    the history, and its database libraries, is imported)."""
    return str(setting).strip().lower() in ("off", "0", "no", "false", "")
