"""A real browser for the playground tests: Debian's chromium driven by Playwright (its own download does not work here)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium per module; the tests skip when chromium or Playwright is missing.

    Not per session: Playwright's sync API keeps an event loop running on the main thread while it is open, and the
    test modules after this one call asyncio.run() there."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()
