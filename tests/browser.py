"""Debian's headless Chromium driven by Playwright for Python (no browser download: ``executable_path``).

    with browser_page(tmp_path) as page:
        page.goto(url)
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not installed (apt-get install chromium; .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (Python) not installed: pip install -e '.[dev]'"
    return None


@contextlib.contextmanager
def browser_page(width: int = 1440, height: int = 900) -> Iterator[Any]:
    """A page in a fresh Chromium profile; console errors and CSP violations are collected in ``page.errors``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="sr-chromium-") as profile:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": width, "height": height}, timeout=30_000)
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.errors = []  # type: ignore[attr-defined]
            page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            yield page
        finally:
            ctx.close()
