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
