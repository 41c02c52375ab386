"""The report's Findings: sentences generated from the figures, with their intervals, in every
format (console, the pytest summary, Markdown, HTML)."""

import html
import re
from pathlib import Path

import pandas as pd

from bench_lib.analysis.findings import findings
from bench_lib.analysis.report import (
    finetune_table,
    ordered_strategies,
    render_console,
    render_html,
    render_markdown,
    render_summary,
)
from bench_lib.records.schema import read_report

SMALL = Path(__file__).parent / "data" / "small.csv"

# What the fixture's figures say (tests/make_fixture.py): no_grad's ratio interval contains 1.0,
# inference_mode's and frozen_3's do not, the CUDA case ran in one process (no interval).
NO_GRAD = "no_grad: no measurable difference (0.980x grad, 95% CI 0.950-1.010), 25% less peak memory (192.0 KiB vs 256.0 KiB)"
INFERENCE_MODE = (
    "inference_mode: 4% less time (95% CI 2-6%; 0.960x grad), 25% less peak memory (192.0 KiB vs 256.0 KiB)"
)
FROZEN_3 = "frozen_3: 67% less step time (95% CI 66-68%; 0.330x full), 74% less memory (2.6 MiB vs 10.3 MiB)"
CUDA = "no_grad: 0.90x grad (10% less time; no interval)"
EXPECTED = (NO_GRAD, INFERENCE_MODE, FROZEN_3, CUDA)


def test_findings_state_the_fixture_figures_with_their_intervals():
    found = findings(read_report(SMALL))
    assert [(f.subject, f.topic, f.items) for f in found] == [
        ("mlp on cpu", "Inference at batch 32, against grad", (NO_GRAD, INFERENCE_MODE)),
        ("mlp on cpu", "Fine-tuning at batch 32 with adamw, against full", (FROZEN_3,)),
        ("mlp on cuda (bfloat16)", "Inference at batch 32, against grad", (CUDA,)),
    ]
    assert all(f.headline for f in found)


def test_findings_come_from_the_data_not_from_text():
    frame = read_report(SMALL)
    row = (frame["mode"] == "no_grad") & (frame["device"] == "cpu")
    columns = ["latency_ratio_to_grad", "latency_ratio_to_grad_ci_low", "latency_ratio_to_grad_ci_high"]
    frame.loc[row, columns] = (0.92, 0.90, 0.94)
    assert findings(frame)[0].items[0].startswith("no_grad: 8% less time (95% CI 6-10%; 0.920x grad)")


def test_every_format_leads_with_the_findings():
    frame = read_report(SMALL)
    page = html.unescape(re.sub(r"<[^>]+>", "", render_html(frame)))
    for text in (render_console(frame), render_summary(frame), render_markdown(frame), page):
        assert all(sentence in text for sentence in EXPECTED), text[:2000]
        assert text.index("Findings") < text.index("Environment" if "Environment" in text else "Inference")


def test_the_run_summary_shows_headlines_only_and_the_console_report_everything():
    frame = read_report(SMALL)
    small_batch = frame[frame["suite"] == "inference"].copy()
    small_batch["batch_size"] = 1
    frame = pd.concat([frame, small_batch], ignore_index=True)
    assert "Inference at batch 1, against grad" in render_console(frame)
    assert "Inference at batch 1, against grad" not in render_summary(frame)
    assert "Inference at batch 32, against grad" in render_summary(frame)


def finetune_frame(strategies, ratios):
    """The fixture's fine-tuning rows renamed to `strategies` (its two rows, then copies)."""
    frame = read_report(SMALL)
    rows = frame[frame["suite"] == "finetune"]
    out = pd.concat([rows.iloc[[i % 2]] for i in range(len(strategies))], ignore_index=True)
    out["strategy"] = strategies
    out["latency_ratio_to_full"] = [r for r, _ in ratios]
    out["latency_ratio_to_full_ci_low"] = [ci[0] if ci else pd.NA for _, ci in ratios]
    out["latency_ratio_to_full_ci_high"] = [ci[1] if ci else pd.NA for _, ci in ratios]
    return out


def test_strategies_are_not_a_fixed_list_full_first_then_as_they_come():
    assert ordered_strategies(["lora", "checkpoint", "full", "frozen_1", "lora"]) == [
        "full", "lora", "checkpoint", "frozen_1",
    ]  # fmt: skip
    frame = finetune_frame(
        ["lora", "full", "checkpoint"], [(0.7, (0.68, 0.72)), (1.0, None), (1.25, (1.2, 1.3))]
    )
    assert list(finetune_table(frame).index.get_level_values("strategy")) == ["full", "lora", "checkpoint"]
    (found,) = findings(frame)
    assert found.items[0].startswith("lora: 30% less step time (95% CI 28-32%; 0.700x full)")
    assert found.items[1].startswith("checkpoint: 25% more step time (95% CI 20-30%; 1.250x full)")


def test_figure_titles_say_what_the_interval_says():
    from bench_lib.analysis.intervals import Estimate
    from bench_lib.analysis.plots import _finetune_headline, _takes

    assert _takes(Estimate.of(0.83, 0.81, 0.85), "grad") == "takes 0.83x grad's time (95% CI 0.81-0.85)"
    assert _takes(Estimate.of(0.98, 0.95, 1.01), "grad") == (
        "takes 0.98x grad's time: no measurable difference (95% CI 0.95-1.01)"
    )
    assert _takes(Estimate.of(0.9), "grad") == "takes 0.90x grad's time (no interval)"
    labels = ["b32 adamw full", "b32 adamw frozen_3"]
    memory = pd.DataFrame({"a": [4.0, 1.0]})
    headline = _finetune_headline(labels, [Estimate(None), Estimate.of(0.97, 0.9, 1.04)], memory)
    assert headline == (
        "at batch 32 with adamw, frozen_3 takes 0.97x full's step time: no measurable difference "
        "(95% CI 0.90-1.04) and 25% of its memory"
    )
