"""The HTML report and comparison opened in a real browser (headless Chromium through Playwright,
tests/browser.py): no console errors, every image loads, and the Findings state the fixture's
figures on the first screen. Skipped, with the reason, where no Chromium exists (CI installs it)."""

from pathlib import Path

import browser
import pytest
from test_findings import EXPECTED
from test_report_cli import other_machine

from bench_lib.cli import main

SMALL = Path(__file__).parent / "data" / "small.csv"

pytestmark = pytest.mark.skipif(browser.why_not() is not None, reason=str(browser.why_not()))


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser") / "report.html"
    assert main(["report", str(SMALL), "--format", "html", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("size", ["desktop", "laptop"])
def test_the_report_loads_cleanly_and_opens_on_its_findings(report_page, size):
    seen = browser.check(report_page, browser.SIZES[size])
    assert seen.console_errors == [] and seen.page_errors == []
    assert seen.images == 4 and seen.broken_images == []  # 2 inference, 1 fine-tuning, 1 where
    for sentence in EXPECTED:
        assert sentence in seen.findings
    # the first screen states the headline figures
    assert "Findings" in seen.first_screen and "4% less time (95% CI 2-6%; 0.960x grad)" in seen.first_screen


def test_a_default_profile_sized_fine_tuning_table_fits_a_laptop_screen(tmp_path):
    """Six strategies with asymmetric intervals (the widest cells a default run gives): every
    column, total and saving included, is in view at 1366 px beside the contents."""
    import pandas as pd

    from bench_lib.records.schema import read_report

    frame = read_report(SMALL)
    finetune = frame[frame["suite"] == "finetune"]
    extra = [
        finetune.iloc[[1]].assign(strategy=s) for s in ("frozen_nograd", "checkpoint", "lora", "frozen_1")
    ]
    frame = pd.concat([frame, *extra], ignore_index=True)
    rows = frame["suite"] == "finetune"
    frame.loc[rows, ["latency_ms_median", "latency_ms_median_ci_low", "latency_ms_median_ci_high"]] = [
        60.123, 58.117, 63.912,
    ]  # fmt: skip
    frame.loc[rows, "mem_activations_bytes"] = 20_840_000
    frame.to_csv(tmp_path / "wide.csv", index=False)
    out = tmp_path / "wide.html"
    assert main(["report", str(tmp_path / "wide.csv"), "--format", "html", "--out", str(out)]) == 0
    seen = browser.check(out, browser.SIZES["laptop"])
    assert [t for t in seen.wide_tables if t[0].startswith(("fine-tuning", "inference"))] == []


def test_an_inference_table_with_no_measurable_difference_fits_a_laptop_screen(tmp_path):
    """A default run's MLP table (1222 px in its 1098 px box before): intervals on every median
    and a ratio whose interval contains 1.0, tagged "no measurable difference" beside the figure,
    which widened its column; the tag now goes under the figure and wraps."""
    from bench_lib.records.schema import read_report

    frame = read_report(SMALL)
    rows = frame["suite"] == "inference"
    frame.loc[rows, ["latency_ms_median", "latency_ms_median_ci_low", "latency_ms_median_ci_high"]] = [
        0.0669, 0.0663, 0.0675,
    ]  # fmt: skip
    ratios = ["latency_ratio_to_grad", "latency_ratio_to_grad_ci_low", "latency_ratio_to_grad_ci_high"]
    frame.loc[rows & frame["mode"].ne("grad"), ratios] = [0.978, 0.954, 1.002]
    frame.loc[rows, "processes"] = 5
    frame.to_csv(tmp_path / "nodiff.csv", index=False)
    out = tmp_path / "nodiff.html"
    assert main(["report", str(tmp_path / "nodiff.csv"), "--format", "html", "--out", str(out)]) == 0
    assert "no measurable difference</span>" in out.read_text()
    seen = browser.check(out, browser.SIZES["laptop"])
    assert [t for t in seen.wide_tables if t[0].startswith("inference")] == []


def test_the_h200_example_report_fits_a_laptop_screen(tmp_path):
    """The committed report of the first real GPU run: its GPU table (108 CUDA cases with ids as
    long as finetune-transformer-cuda-b32-bfloat16-adamw-frozen_nograd, eleven columns) was
    1162 px in its 1098 px box at 1366 px, clock-event reasons out of view; the ids now wrap."""
    example = Path(__file__).parent.parent / "results" / "examples" / "nvidia-h200" / "nvidia-h200.csv"
    out = tmp_path / "h200.html"
    assert main(["report", str(example), "--format", "html", "--out", str(out)]) == 0
    seen = browser.check(out, browser.SIZES["laptop"])
    assert seen.console_errors == [] and seen.page_errors == [] and seen.broken_images == []
    assert seen.wide_tables == []
    assert "transformer on cuda (bfloat16)" in seen.findings


def test_the_check_sees_a_table_wider_than_its_box(tmp_path):
    page = tmp_path / "wide.html"
    page.write_text(
        '<!DOCTYPE html><html><body><section id="s"><div style="width:300px;overflow-x:auto">'
        '<table><tr><td style="white-space:nowrap">'
        + "wide " * 100
        + "</td></tr></table></div></section></body></html>"
    )
    (section, table, box) = browser.check(page).wide_tables[0]
    assert section == "s" and box == 300 and table > 300


def test_the_comparison_loads_cleanly(tmp_path):
    out = tmp_path / "compare.html"
    assert (
        main(["compare", str(SMALL), str(other_machine(tmp_path)), "--format", "html", "--out", str(out)])
        == 0
    )
    seen = browser.check(out)
    assert seen.console_errors == [] and seen.page_errors == []
    assert seen.images == 3 and seen.broken_images == []  # the machines' ratios: mlp, transformer, ruler
    assert "non-overlapping intervals" in seen.findings


def test_the_check_sees_a_broken_image_a_console_error_and_a_network_request(tmp_path):
    """The inputs the browser test must fail on."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><section id="findings">none</section>'
        '<img alt="truncated" src="data:image/png;base64,iVBORw0KGgo=">'
        '<img alt="remote" src="https://example.invalid/plot.png">'
        '<script>console.error("boom"); undefined_function();</script></body></html>'
    )
    seen = browser.check(page)
    assert seen.broken_images == ["truncated", "remote"]
    assert "boom" in seen.console_errors
    assert any("network request refused: https://example.invalid/plot.png" in e for e in seen.console_errors)
    assert any("undefined_function" in e for e in seen.page_errors)


def test_a_comparison_of_two_runs_fits_a_laptop_screen(tmp_path):
    """The two committed H200 runs compared: with a column per report and per ratio for every
    figure, its tables were 1252-1262 px in their 1098 px box at 1366 px. Memory figures both
    runs measured to the byte now show once ("peak (A = B)"), and an interval may go under its
    figure."""
    examples = Path(__file__).parent.parent / "results" / "examples" / "nvidia-h200"
    out = tmp_path / "h200-compare.html"
    pair = [str(examples / "first-run" / "nvidia-h200.csv"), str(examples / "nvidia-h200.csv")]
    assert main(["compare", *pair, "--format", "html", "--out", str(out)]) == 0
    page = out.read_text()
    assert "peak (A\u00a0=\u00a0B)" in page and '<table class="wrap-ci">' in page
    seen = browser.check(out, browser.SIZES["laptop"])
    assert seen.console_errors == [] and seen.page_errors == []
    assert seen.wide_tables == []
