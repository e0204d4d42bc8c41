"""Open a report in a real headless browser: console errors, page errors, failed loads and how big
each chart rendered, plus a full-page screenshot. Used by the tests and to make the screenshots
checked in under examples/results/report/; needs `playwright` (pip) and a Chromium binary (the
distribution's package: no browser download)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """The first Chromium-family binary on PATH, or None."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class Rendered:
    """What the browser saw."""

    errors: list[str] = field(default_factory=list)
    charts: list[dict] = field(default_factory=list)  # per <img class=chart>: alt, natural and shown size
    title: str = ""


def render(page: Path, screenshot: Path, executable: str, open_details: bool = False,
           width: int = 1400, timeout_s: float = 60.0) -> Rendered:
    """Load `page` from file://, wait for it to settle, screenshot the full page. `open_details`
    unfolds every <details> first (so charts of folded sections are laid out and measured)."""
    from playwright.sync_api import sync_playwright

    seen = Rendered()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
                                     timeout=timeout_s * 1000)
        try:
            tab = browser.new_page(viewport={"width": width, "height": 900})
            tab.set_default_timeout(timeout_s * 1000)
            tab.on("console", lambda m: seen.errors.append(f"console {m.type}: {m.text}")
                   if m.type in ("error", "warning") else None)
            tab.on("pageerror", lambda exc: seen.errors.append(f"page error: {exc}"))
            tab.on("requestfailed", lambda r: seen.errors.append(f"failed to load {r.url}: {r.failure}"))
            tab.goto(page.resolve().as_uri(), wait_until="load")
            if open_details:
                tab.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
            tab.wait_for_function("Array.from(document.images).every(i => i.complete)")
            seen.charts = tab.evaluate("""Array.from(document.querySelectorAll('img.chart')).map(i => ({
                alt: i.alt, natural_width: i.naturalWidth, natural_height: i.naturalHeight,
                width: i.getBoundingClientRect().width, height: i.getBoundingClientRect().height}))""")
            seen.title = tab.title()
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return seen
