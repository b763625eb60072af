"""A real browser for the tests: the system's Chromium (Debian's ``chromium`` package, which
``scripts/test.sh`` installs when it runs as root) driven by Playwright from PyPI, pointed at it by
``executable_path`` (Playwright cannot download its own browsers here). Without a Chromium the
tests skip, saying how to install one. Screenshots go to ``shots_dir()``, kept after the run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: the names Chromium goes by on PATH (Debian: chromium; others: chromium-browser, chrome)
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL = (
    "no Chromium on PATH: `apt-get install chromium` (Debian/Ubuntu; scripts/test.sh does "
    "it when run as root) or put chromium on PATH"
)


def chromium() -> str | None:
    return next((found for name in NAMES if (found := shutil.which(name))), None)


def shots_dir() -> Path:
    """Where screenshots are kept: $TRAINTEL_TEST_SHOTS, else a folder under the system's temp
    directory (printed by the tests that write there)."""
    folder = Path(
        os.environ.get("TRAINTEL_TEST_SHOTS") or Path(tempfile.gettempdir()) / "traintel-test-shots"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (one per test module)."""
    executable = chromium()
    if executable is None:
        pytest.skip(INSTALL)
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is missing: pip install 'traintel[dev]'"
    )
    with playwright_api.sync_playwright() as p:
        # root (CI, containers) needs --no-sandbox; the pages are our own, on loopback
        browser = p.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()
