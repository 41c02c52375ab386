"""Opening the HTML pages in a real browser: Debian's headless Chromium driven by Playwright's
Python API (the `dev` extra; no browser is downloaded: `executable_path` points at the system's).

Playwright rather than `chromium --dump-dom`: the checks need the page's console messages,
uncaught errors and each image's decoded size, which a DOM dump does not give.

    python tests/browser.py PAGE.html OUT_DIR     screenshots at desktop and laptop sizes
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# desktop, and the two common laptop screens
SIZES = {"desktop": (1440, 900), "laptop": (1366, 768), "laptop-1280": (1280, 800)}


def chromium() -> str | None:
    """The browser to drive: $BENCH_CHROMIUM (if it exists), else the first of CANDIDATES on PATH."""
    named = os.environ.get("BENCH_CHROMIUM")
    if named:
        return named if Path(named).exists() else None
    return next(filter(None, map(shutil.which, CANDIDATES)), None)


def why_not() -> str | None:
    """Why a browser test cannot run here (None: it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if chromium() is None:
        return "no Chromium here (apt-get install chromium, or set BENCH_CHROMIUM to its path)"
    return None


@dataclass
class PageCheck:
    """What the browser saw: console errors and warnings, uncaught errors, images that did not
    load (their alt text), the text of the element `#findings`, the first screen's text, and
    the tables wider than their box (scrolled sideways) once every section is open."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    images: int = 0
    findings: str = ""
    first_screen: str = ""
    wide_tables: list[tuple[str, int, int]] = field(default_factory=list)  # (section, table px, box px)


IMAGES = (
    """() => [...document.images].map(i => [i.alt || i.src.slice(0, 40), i.complete && i.naturalWidth > 0])"""
)
WIDE_TABLES = """() => { document.querySelectorAll('details').forEach(d => d.open = true);
  return [...document.querySelectorAll('table')].filter(t => t.scrollWidth > t.parentElement.clientWidth + 1)
    .map(t => [t.closest('[id]')?.id || '', t.scrollWidth, t.parentElement.clientWidth]); }"""
FIRST_SCREEN = """() => { const out = []; const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) { const r = walk.currentNode.parentElement.getBoundingClientRect();
    if (r.bottom > 0 && r.top < window.innerHeight && r.width > 0) out.push(walk.currentNode.textContent); }
  return out.join(' '); }"""


def check(page_path: Path, size: tuple[int, int] = SIZES["desktop"]) -> PageCheck:
    """Load the page from disk (offline: every request that is not file: or data: is refused
    and counts as a console error) and report what the browser saw."""
    from playwright.sync_api import sync_playwright

    seen = PageCheck()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.on(
                "console", lambda m: m.type in ("error", "warning") and seen.console_errors.append(m.text)
            )
            page.on("pageerror", lambda e: seen.page_errors.append(str(e)))

            def offline(route: object) -> None:
                url = route.request.url  # type: ignore[attr-defined]
                if url.startswith(("file:", "data:")):
                    route.continue_()  # type: ignore[attr-defined]
                else:
                    seen.console_errors.append(f"network request refused: {url}")
                    route.abort()  # type: ignore[attr-defined]

            page.route("**/*", offline)
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            images = page.evaluate(IMAGES)
            seen.images = len(images)
            seen.broken_images = [alt for alt, ok in images if not ok]
            if page.locator("#findings").count():
                seen.findings = page.locator("#findings").inner_text()
            seen.first_screen = page.evaluate(FIRST_SCREEN)
            seen.wide_tables = [tuple(t) for t in page.evaluate(WIDE_TABLES)]  # every section open
        finally:
            browser.close()
    return seen


def screenshots(page_path: Path, out: Path, stem: str) -> list[Path]:
    """The first screen at each of SIZES, and the whole page at desktop width, as PNGs."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            for name, (width, height) in SIZES.items():
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(page_path.resolve().as_uri(), wait_until="load")
                target = out / f"{stem}-{name}-{width}x{height}.png"
                page.screenshot(path=str(target))
                written.append(target)
                if name == "desktop":
                    whole = out / f"{stem}-{name}-full.png"
                    page.screenshot(path=str(whole), full_page=True)
                    written.append(whole)
                page.close()
        finally:
            browser.close()
    return written


if __name__ == "__main__":
    for path in screenshots(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[1]).stem):
        print(path)
